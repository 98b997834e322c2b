"""The Ray layer: the only package of idc_ray that imports Ray (docs/architecture.md)."""
