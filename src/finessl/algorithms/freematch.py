"""FreeMatch (Wang et al., ICLR 2023): self-adaptive thresholds and a fairness loss.

EMAs with momentum m over the weak view's probabilities (all initialised to 1/C):
global ``tau_t = m tau + (1 - m) mean(max p)``, local ``p~_t = m p~ + (1 - m) mean(p)``,
histogram ``h_t = m h + (1 - m) hist(argmax p)``. A sample passes when
``max p >= tau_t * p~_t(yhat) / max_c p~_t(c)``; the EMAs update before masking.
Fairness: ``L_f = sum SumNorm(p~/h) * log SumNorm(pbar_s / hbar_s)`` over the passing
strong-view predictions (zero if none pass), weighted by ``algorithm.freematch.fairness_weight``.
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


def _sum_norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum(dim=-1, keepdim=True)


def _safe_reciprocal(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(1.0 / x, nan=0.0, posinf=0.0, neginf=0.0)


@method_options("algorithm", "freematch", aliases={"fairness_weight": "fairness_weight"})
@dataclass
class FreeMatchOptions:
    """FreeMatch's fairness loss."""

    fairness_weight: float = opt(0.01, "weight lambda_f of the fairness loss", ge=0)


@ALGORITHMS.register("freematch")
class FreeMatch(SelfTraining):
    def __init__(self, config: AlgorithmConfig, num_classes: int, num_unlabeled: int,
                 **context) -> None:
        super().__init__(config, num_classes, num_unlabeled, **context)
        uniform = torch.full((num_classes,), 1.0 / num_classes)
        self.register_buffer("time_p", torch.tensor(1.0 / num_classes))
        self.register_buffer("p_model", uniform.clone())
        self.register_buffer("label_hist", uniform.clone())

    def mask(self, probs: torch.Tensor, batch: Batch):
        m = self.config.ema_momentum
        confidence, pseudo = probs.max(dim=-1)
        self.time_p.mul_(m).add_((1 - m) * confidence.mean())
        self.p_model.mul_(m).add_((1 - m) * probs.mean(dim=0))
        hist = torch.bincount(pseudo, minlength=self.num_classes).float()
        self.label_hist.mul_(m).add_((1 - m) * hist / hist.sum())
        local = self.p_model / self.p_model.max()
        selected = confidence >= self.time_p * local[pseudo]
        return selected.float(), selected

    def extra_losses(self, out, batch, weight, selected):
        strong_logits = out.weak if self.train_on_weak else out.strong
        views = strong_logits.shape[0] // selected.shape[0]
        passing = selected.repeat(views)
        if not passing.any():
            return {"loss_fair": strong_logits.sum() * 0.0}
        probs = strong_logits[passing].float().softmax(dim=-1)
        hist = torch.bincount(probs.argmax(dim=-1), minlength=self.num_classes).float()
        hist = hist / hist.sum()
        target = _sum_norm(self.p_model * _safe_reciprocal(self.label_hist))
        mean_probs = _sum_norm(probs.mean(dim=0) * _safe_reciprocal(hist))
        fairness = (target * torch.log(mean_probs + 1e-12)).sum()
        return {"loss_fair": self.config.options("freematch").fairness_weight * fairness}
