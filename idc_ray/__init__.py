"""idc_ray: IDC dataset condensation (Kim et al., ICML 2022) on PyTorch and Ray.

    import idc_ray
    stored, labels, manifest = idc_ray.load_condensed("s3://bucket/run")
    train_set = idc_ray.formed_dataset("s3://bucket/run")   # torch Dataset, normalised
"""

__version__ = "0.1.0"

__all__ = ["__version__", "formed_dataset", "load_condensed"]


def __getattr__(name: str):
    # Resolved on first use (PEP 562) so `import idc_ray.config` in a job or a Ray worker does not
    # pull in torchvision and pyarrow, and idc_ray.artifacts can import idc_ray.__version__.
    if name in ("load_condensed", "formed_dataset"):
        from idc_ray import artifacts

        return getattr(artifacts, name)
    raise AttributeError(f"module 'idc_ray' has no attribute {name!r}")
