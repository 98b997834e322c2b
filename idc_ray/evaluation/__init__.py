"""Evaluation of condensed data: train a fresh test model on it, report test accuracy.

``train`` (one training run), ``protocol`` (the paper's recipe, tasks), ``baselines`` (random,
herding), ``sets`` (artifacts, plain files, baselines as training sets), ``assembly`` (the sets
of a request and the real data they are tested on), ``executor`` (the in-process executor,
``Sequential``; the Ray one is in ``idc_ray.distributed.evaluation``), ``report`` (results.json,
results.md, curves.png, where they go) and ``run`` (the orchestration of those,
:func:`~idc_ray.evaluation.run.evaluate_artifact`, with an executor handed in). Import from the
defining module.
"""
