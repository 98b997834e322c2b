"""idc_ray: IDC dataset condensation (Kim et al., ICML 2022) on PyTorch and Ray.

    from idc_ray.artifacts import formed_dataset, load_condensed
    stored, labels, manifest = load_condensed("s3://bucket/run")
    train_set = formed_dataset("s3://bucket/run")   # torch Dataset, normalised

docs/architecture.md says which module owns what.
"""

__version__ = "0.1.0"
