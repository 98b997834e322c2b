"""The in-process references of the distributed tests (the session's Ray cluster, ``ray_cluster``,
and ``one_thread`` are in tests/conftest.py)."""

import pytest
import torch


@pytest.fixture(scope="module")
def local_reference(cfg, tmp_path_factory):
    """The in-process run of the module's ``cfg`` with 1 torch thread (see ``one_thread``)."""
    from idc_ray.backends import condense_job
    from idc_ray.run.backend import RunOptions

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return condense_job(cfg, str(tmp_path_factory.mktemp("local")), RunOptions(backend="local"))
    finally:
        torch.set_num_threads(before)
