"""FlexMatch (Zhang et al., NeurIPS 2021): curriculum pseudo-labeling with class-wise thresholds.

``sigma_c`` counts unlabeled samples whose latest confident (>= tau) prediction is c.
``beta_c = sigma_c / max(max_k sigma_k, N - sum_k sigma_k)`` with warm-up (the unused
samples count as a class), else ``sigma_c / max_k sigma_k``. A sample passes when
``max p >= tau * M(beta_yhat)``, ``M(x) = x / (2 - x)``. The counts update after masking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from finessl.algorithms.base import ALGORITHMS, Batch
from finessl.algorithms.self_training import SelfTraining
from finessl.options import method_options, opt

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import AlgorithmConfig


@method_options("algorithm", "flexmatch", aliases={"flex_warmup": "warmup"})
@dataclass
class FlexMatchOptions:
    """FlexMatch's curriculum."""

    warmup: bool = opt(True, "threshold warm-up: unused samples count as a class")


@ALGORITHMS.register("flexmatch")
class FlexMatch(SelfTraining):
    def __init__(self, config: AlgorithmConfig, num_classes: int, num_unlabeled: int,
                 **context) -> None:
        super().__init__(config, num_classes, num_unlabeled, **context)
        self.register_buffer("selected_label", torch.full((num_unlabeled,), -1, dtype=torch.long))
        self.register_buffer("classwise_acc", torch.zeros(num_classes))

    def mask(self, probs: torch.Tensor, batch: Batch):
        tau = self.config.threshold
        confidence, pseudo = probs.max(dim=-1)
        beta = self.classwise_acc[pseudo]
        weight = (confidence >= tau * beta / (2.0 - beta)).float()
        confident = confidence >= tau
        self.selected_label[batch.unlabeled_index[confident]] = pseudo[confident]
        self.update_classwise_acc()
        return weight, weight.bool()

    def update_classwise_acc(self) -> None:
        chosen = self.selected_label[self.selected_label >= 0]
        counts = torch.bincount(chosen, minlength=self.num_classes).float()
        unused = float(self.num_unlabeled - chosen.numel())
        if chosen.numel() == 0:
            return  # nothing confident yet: thresholds stay at their initial values
        warmup = self.config.options("flexmatch").warmup
        denominator = max(counts.max().item(), unused) if warmup else counts.max()
        self.classwise_acc.copy_(counts / denominator)
