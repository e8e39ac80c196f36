"""FineSSL (Gan & Wei, ICML 2024): FixMatch + balanced margin softmax + decoupled label
smoothing, with every unlabeled sample weighted by the auxiliary head's confidence."""

from __future__ import annotations

from finessl.algorithms.base import ALGORITHMS
from finessl.algorithms.self_training import SelfTraining


@ALGORITHMS.register("finessl")
class FineSSL(SelfTraining):
    """The family's step with FineSSL's parts switched on (docs/method.md, step by step):
    beta from the class pace; margins ``Delta_k = alpha (max beta - min beta) (1 - beta_k) /
    (1 + beta_k)``; ``L_x = CE_BMS(h(z_x), y)``, ``L_x' = CE(h'(sg z_x), y)``; pseudo-labels
    and ``c`` from the main head on the weak view, ``c'`` from the auxiliary head;
    ``L_u = mean c' [c' >= th_min] CE_BMS(h(z_s), yhat)`` over all strong views and samples;
    ``L_u' = mean over c >= tau of CE(h'(sg z_s), smoothed yhat)``; pace update for
    ``c >= tau``; ``L = L_x + L_x' + gamma L_u + L_u'``."""

    defaults = {**SelfTraining.defaults, "unlabeled_weight": 3.0, "strong_views": 2,
                "bms": True, "dls": True, "weighting": "aux"}
