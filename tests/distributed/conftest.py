"""The in-process references of the distributed tests (the session's Ray cluster, ``ray_cluster``,
is in tests/conftest.py)."""

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


@pytest.fixture
def one_thread():
    """Matching results depend on torch's thread count (parallel reductions add in another order),
    so the in-process reference runs with the 1 thread each Ray actor gets on this machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
