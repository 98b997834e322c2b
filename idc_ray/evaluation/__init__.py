"""Evaluation of condensed data: train a fresh test model on it, report test accuracy."""

from idc_ray.evaluation.train import TrainRecipe, TrainResult, evaluate, lr_milestones, train_and_evaluate

__all__ = ["TrainRecipe", "TrainResult", "evaluate", "lr_milestones", "train_and_evaluate"]
