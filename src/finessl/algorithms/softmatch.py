"""SoftMatch (Chen et al., ICLR 2023): truncated-Gaussian weights and uniform alignment.

As USB's SoftMatch runs it: pseudo-labels come from the *raw* weak-view probabilities;
uniform alignment shapes only the weights. Alignment: ``p~ = SumNorm(p / p_model)`` where
``p_model`` is the first batch's mean weak-view probability, then an EMA (momentum m) of
the batch means, updated before aligning. Weights from the aligned confidence ``c``: EMAs
``mu_t``, ``var_t`` (unbiased) of ``c`` (initialised to 1/C and 1), updated before
weighting; ``w = exp(-(min(c - mu_t, 0))^2 / (2 var_t / n_sigma^2))``.
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


@method_options("algorithm", "softmatch", aliases={"softmatch_sigmas": "sigmas"})
@dataclass
class SoftMatchOptions:
    """SoftMatch's truncated Gaussian."""

    sigmas: float = opt(2.0, "n_sigma: the Gaussian's width in standard deviations", gt=0)


@ALGORITHMS.register("softmatch")
class SoftMatch(SelfTraining):
    def __init__(self, config: AlgorithmConfig, num_classes: int, num_unlabeled: int,
                 **context) -> None:
        super().__init__(config, num_classes, num_unlabeled, **context)
        self.register_buffer("p_model", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("p_model_started", torch.tensor(False))
        self.register_buffer("mu", torch.tensor(1.0 / num_classes))
        self.register_buffer("var", torch.tensor(1.0))

    def align(self, probs: torch.Tensor) -> torch.Tensor:
        """Uniform alignment; updates ``p_model`` from this batch first."""
        batch_mean = probs.mean(dim=0)
        if bool(self.p_model_started):
            m = self.config.ema_momentum
            self.p_model.mul_(m).add_((1 - m) * batch_mean)
        else:
            self.p_model.copy_(batch_mean)
            self.p_model_started.fill_(True)
        aligned = probs / self.p_model
        return aligned / aligned.sum(dim=-1, keepdim=True)

    def mask(self, probs: torch.Tensor, batch: Batch):
        m = self.config.ema_momentum
        confidence = self.align(probs).max(dim=-1).values
        self.mu.mul_(m).add_((1 - m) * confidence.mean())
        if confidence.numel() > 1:
            self.var.mul_(m).add_((1 - m) * confidence.var(unbiased=True))
        gap = torch.clamp(confidence - self.mu, max=0.0)
        weight = torch.exp(-(gap ** 2) / (2 * self.var / self.config.options("softmatch").sigmas ** 2))
        return weight, confidence >= self.mu
