"""Pseudo-Label (Lee, 2013): training on its own confident predictions for the image itself."""

from __future__ import annotations

from finessl.algorithms.base import ALGORITHMS
from finessl.algorithms.self_training import SelfTraining


@ALGORITHMS.register("pseudolabel")
class PseudoLabel(SelfTraining):
    """The weak view is both the target and the input of the unlabeled loss; its weight
    ramps up from 0 over the first 40 % of training (USB's recipe)."""

    weak_grad = True
    train_on_weak = True
    defaults = {**SelfTraining.defaults, "strong_views": 0, "unlabeled_warmup": 0.4}
