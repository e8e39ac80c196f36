"""FixMatch (Sohn et al., 2020): confidence-thresholded hard pseudo-labels on a strong view."""

from __future__ import annotations

from finessl.algorithms.base import ALGORITHMS
from finessl.algorithms.self_training import SelfTraining


@ALGORITHMS.register("fixmatch")
class FixMatch(SelfTraining):
    """``L = CE(x, y) + w * mean_i [c_i >= tau] CE(strong_i, argmax p_weak_i)``: the family's
    step with none of its hooks changed."""
