"""Run by test_multinode.py in its own process: a head and two worker nodes (one fake GPU and two
CPUs each) with ray.cluster_utils.Cluster, the condensation on it with 2 matchers and 2 expert
actors spread over the nodes (--spread), and what the test checks as JSON."""

import json
import logging
import sys

import ray
import torch
from ray.cluster_utils import Cluster

from idc_ray.config import apply_overrides, load_preset
from idc_ray.backends import condense_job
from idc_ray.run.backend import RunOptions


def main(out: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
    cfg = apply_overrides(load_preset("smoke"), ["schedule.outer_iters=2", "schedule.inner_iters=2"])
    result = condense_job(cfg, out + "/ray", RunOptions(num_actors=2, expert_actors=2, gpus_per_actor=1,
                                                        expert_gpus=0, cpus_per_actor=1, spread=True))
    ray.shutdown()
    cluster.shutdown()
    torch.set_num_threads(1)
    local = condense_job(cfg, out + "/local", RunOptions(backend="local"))
    print(json.dumps({
        "worker_nodes": [w.node_id for w in workers],
        "placement": result.placement,
        "equal": bool(torch.equal(result.stored, local.stored)),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
