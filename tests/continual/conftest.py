"""The Ray cluster of the continual job's tests: the session's one (tests/distributed/conftest.py's
``ray_cluster``, 2 CPUs) when it is already up, else the same kind started for this module only,
so a session running both folders never starts two clusters at once."""

import logging

import pytest
import ray


@pytest.fixture(scope="module")
def ray_cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()
