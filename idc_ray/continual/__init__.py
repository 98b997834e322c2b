"""Continual learning with condensed exemplars (paper section 5.3, appendix C.3), pure PyTorch.

``stages``: which classes arrive when and each stage's data; ``exemplars``: each stage's IDC,
Herding and Random exemplars and their cache; ``learner``: head expansion, LwF distillation and
the per-stage training; ``job``: the whole run; ``report``: results.json/.md and continual.png.
The Ray side (stages and learners as parallel tasks) is idc_ray/distributed/continual.py.
"""
