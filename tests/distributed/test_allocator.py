"""The actors' allocator settings: freed activations are reused instead of page-faulted in again."""

import ray

from idc_ray.distributed.actors import actor_runtime_env


@ray.remote(num_cpus=0.1)
def faults_of_a_second_big_tensor(mib: int) -> tuple[int, bool]:
    """Minor page faults of allocating and filling a ``mib`` MiB tensor after freeing one."""
    import resource

    import torch

    from idc_ray.distributed.actors import keeps_freed_memory

    torch.ones(mib * 2**18)  # allocated, touched and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(mib * 2**18)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, keeps_freed_memory()


def test_actor_env_reuses_freed_memory(ray_cluster):
    pages = 64 * 2**20 // 4096  # a 64 MiB tensor spans 16384 pages
    kept, kept_flag = ray.get(faults_of_a_second_big_tensor.options(runtime_env=actor_runtime_env(True)).remote(64))
    system, system_flag = ray.get(faults_of_a_second_big_tensor.options(runtime_env=actor_runtime_env(False)).remote(64))
    assert kept_flag and not system_flag
    assert system >= pages // 2  # glibc mmaps it afresh: every page faults in again
    assert kept < pages // 20
