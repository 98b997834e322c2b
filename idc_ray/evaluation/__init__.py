"""Evaluation of condensed data: train a fresh test model on it, report test accuracy.

``train`` (one training run), ``protocol`` (the paper's recipe, tasks), ``baselines`` (random,
herding), ``sets`` (artifacts, plain files, baselines as training sets), ``report`` (results.json,
results.md, curves.png) and ``run`` (orchestration, :func:`~idc_ray.evaluation.run.evaluate_artifact`,
with an executor handed in: the sequential one here, the Ray one in
``idc_ray.distributed.evaluation``). Import from the defining module.
"""
