"""FixMatch (Sohn et al., 2020) and Pseudo-Label (Lee, 2013): confidence-thresholded hard labels."""

from __future__ import annotations

from finessl.algorithms.base import ALGORITHMS
from finessl.algorithms.pseudo_labeling import PseudoLabeling


@ALGORITHMS.register("fixmatch")
class FixMatch(PseudoLabeling):
    """``L = CE(x, y) + w * mean_i [c_i >= tau] CE(strong_i, argmax p_weak_i)``."""

    name = "fixmatch"


@ALGORITHMS.register("pseudolabel")
class PseudoLabel(PseudoLabeling):
    """Trains on its own confident predictions for the (weakly augmented) image itself; the
    unlabeled weight ramps up from 0 over the first 40 % of training (USB's recipe)."""

    name = "pseudolabel"
    weak_grad = True
    train_on_weak = True
    defaults = {**PseudoLabeling.defaults, "strong_views": 0, "unlabeled_warmup": 0.4}


@ALGORITHMS.register("finessl")
class FineSSL(PseudoLabeling):
    """FineSSL (Gan & Wei, ICML 2024) = FixMatch + balanced margin softmax + decoupled label
    smoothing, with every unlabeled sample weighted by the auxiliary head's confidence.

    docs/method.md, step by step: beta from the class pace; margins
    ``Delta_k = alpha (max beta - min beta) (1 - beta_k) / (1 + beta_k)``;
    ``L_x = CE_BMS(h(z_x), y)``, ``L_x' = CE(h'(sg z_x), y)``; pseudo-labels and ``c`` from
    the main head on the weak view, ``c'`` from the auxiliary head;
    ``L_u = mean c' [c' >= th_min] CE_BMS(h(z_s), yhat)`` over all strong views and samples;
    ``L_u' = mean over c >= tau of CE(h'(sg z_s), smoothed yhat)``; pace update for
    ``c >= tau``; ``L = L_x + L_x' + gamma L_u + L_u'``.
    """

    name = "finessl"
    defaults = {**PseudoLabeling.defaults, "unlabeled_weight": 3.0, "strong_views": 2,
                "bms": True, "dls": True, "weighting": "aux"}
