"""Evaluation of condensed data: train a fresh test model on it, report test accuracy.

``train`` (one training run), ``protocol`` (the paper's recipe, tasks), ``baselines`` (random,
herding), ``sets`` (artifacts, plain files, baselines as training sets), ``report`` (results.json,
results.md, curves.png), ``run`` (orchestration, :func:`evaluate_artifact`) and ``parallel``
(the Ray tasks; the only module here that imports Ray, loaded on demand).
"""

from idc_ray.evaluation.train import (TrainRecipe, TrainResult, evaluate, lr_milestones, report_epochs,
                                      train_and_evaluate)

__all__ = ["TrainRecipe", "TrainResult", "evaluate", "evaluate_artifact", "lr_milestones", "report_epochs",
           "train_and_evaluate"]


def __getattr__(name: str):
    # evaluate_artifact pulls in artifacts/pyarrow; load it only when asked for.
    if name == "evaluate_artifact":
        from idc_ray.evaluation.run import evaluate_artifact

        return evaluate_artifact
    raise AttributeError(name)
