"""Ray Tune sweeps without Ray: search spaces (:mod:`.space`), the caches trials share
(:mod:`.cache`) and the ranked results (:mod:`.results`). The samplers, the trainable and the
Tuner live in :mod:`idc_ray.distributed.sweep_space`, :mod:`idc_ray.distributed.trial` and
:mod:`idc_ray.distributed.sweep`."""
