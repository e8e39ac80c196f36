"""DebiasPL (Wang et al., CVPR 2022): debiased pseudo-labels and an adaptive margin loss.

A momentum estimate of the class prior ``p_hat <- m p_hat + (1 - m) mean(softmax(logits_w))``
(initialised to 1/C, updated first). Pseudo-labels and confidence come from the debiased
logits ``logits_w - tau log p_hat``; the strong-view loss uses ``logits_s + tau log p_hat``
(logit adjustment, the adaptive margin). ``tau`` = ``debias_strength``.
"""

from __future__ import annotations

import torch

from finessl.algorithms.base import ALGORITHMS
from finessl.algorithms.pseudo_labeling import PseudoLabeling
from finessl.config import AlgorithmConfig


@ALGORITHMS.register("debiaspl")
class DebiasPL(PseudoLabeling):
    name = "debiaspl"

    def __init__(self, config: AlgorithmConfig, num_classes: int, num_unlabeled: int,
                 **context) -> None:
        super().__init__(config, num_classes, num_unlabeled, **context)
        self.register_buffer("p_hat", torch.full((num_classes,), 1.0 / num_classes))

    def adjust_probs(self, probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        m = self.config.ema_momentum
        self.p_hat.mul_(m).add_((1 - m) * probs.mean(dim=0))
        return (logits - self.config.debias_strength * torch.log(self.p_hat)).softmax(dim=-1)

    def adjust_strong(self, logits: torch.Tensor) -> torch.Tensor:
        return logits + self.config.debias_strength * torch.log(self.p_hat).to(logits.dtype)
