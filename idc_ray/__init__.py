"""idc_ray: IDC dataset condensation (Kim et al., ICML 2022) on PyTorch and Ray.

    import idc_ray
    condensed = idc_ray.condense("mnist5k", ipc=1, preset="mnist5k-demo", output="runs/demo")
    train_set = condensed.formed()                   # torch Dataset, formed and normalised
    report = idc_ray.evaluate(condensed, models="convnet3")
    again = idc_ray.load("s3://bucket/run")          # a set written earlier

docs/python.md walks through the API (``idc_ray.api``); docs/architecture.md says which module
owns what.
"""

__version__ = "0.1.0"

_API = ("Condensed", "Report", "condense", "evaluate", "load", "tune_trainable")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """The API on first use (PEP 562): ``import idc_ray`` alone loads neither torch nor Ray."""
    if name in _API:
        # By name, at run time: every module does `from idc_ray import storage`, and none of them
        # reaches the API (nor Ray through it) that way.
        import importlib

        return getattr(importlib.import_module("idc_ray.api"), name)
    raise AttributeError(f"module 'idc_ray' has no attribute {name!r}")
