"""DebiasPL (Wang et al., CVPR 2022): debiased pseudo-labels and an adaptive margin loss.

A momentum estimate of the class prior ``p_hat <- m p_hat + (1 - m) mean(softmax(logits_w))``
(initialised to 1/C, updated first). Pseudo-labels and confidence come from the debiased
logits ``logits_w - tau log p_hat``; the strong-view loss uses ``logits_s + tau log p_hat``
(logit adjustment, the adaptive margin). ``tau`` = ``algorithm.debiaspl.strength``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from finessl.algorithms.base import ALGORITHMS
from finessl.algorithms.self_training import SelfTraining
from finessl.options import method_options, opt

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import AlgorithmConfig


@method_options("algorithm", "debiaspl", aliases={"debias_strength": "strength"})
@dataclass
class DebiasPLOptions:
    """DebiasPL's debiasing."""

    strength: float = opt(0.4, "tau: how strongly the class prior is divided out", ge=0)


@ALGORITHMS.register("debiaspl")
class DebiasPL(SelfTraining):
    def __init__(self, config: AlgorithmConfig, num_classes: int, num_unlabeled: int,
                 **context) -> None:
        super().__init__(config, num_classes, num_unlabeled, **context)
        self.register_buffer("p_hat", torch.full((num_classes,), 1.0 / num_classes))

    def adjust_probs(self, probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        m = self.config.ema_momentum
        self.p_hat.mul_(m).add_((1 - m) * probs.mean(dim=0))
        tau = self.config.options("debiaspl").strength
        return (logits - tau * torch.log(self.p_hat)).softmax(dim=-1)

    def adjust_strong(self, logits: torch.Tensor) -> torch.Tensor:
        tau = self.config.options("debiaspl").strength
        return logits + tau * torch.log(self.p_hat).to(logits.dtype)
