"""FineSSL's building blocks, usable by any algorithm: class pace, balanced margin, smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassPace(nn.Module):
    """Which class each unlabeled sample was last confidently pseudo-labeled as.

    ``selected[i]`` is -1 or a class; ``beta_k = sigma_k / max_j sigma_j`` with ``sigma_k``
    the count of class k. Both reset at the start of every epoch; beta keeps its previous
    value while nothing is selected.
    """

    def __init__(self, num_unlabeled: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("selected", torch.full((num_unlabeled,), -1, dtype=torch.long))
        self.register_buffer("beta", torch.zeros(num_classes))

    def reset(self) -> None:
        self.selected.fill_(-1)
        self.beta.zero_()

    def counts(self) -> torch.Tensor:
        chosen = self.selected[self.selected >= 0]
        return torch.bincount(chosen, minlength=self.beta.numel())

    def refresh(self) -> torch.Tensor:
        """Recomputes beta from the current selections and returns it."""
        sigma = self.counts()
        if sigma.sum() > 0:
            self.beta.copy_(sigma.float() / sigma.max())
        return self.beta

    def update(self, indices: torch.Tensor, pseudo_labels: torch.Tensor, mask: torch.Tensor) -> None:
        self.selected[indices[mask]] = pseudo_labels[mask]


def balanced_margins(beta: torch.Tensor, alpha: float) -> torch.Tensor:
    """``Delta_k = alpha * (max beta - min beta) * (1 - beta_k) / (1 + beta_k)``."""
    scale = alpha * (beta.max() - beta.min())
    return scale * (1 - beta) / (1 + beta)


def margin_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                         margins: torch.Tensor | None) -> torch.Tensor:
    """Per-sample CE after adding ``margins[y]`` to every non-target logit (BMS)."""
    if margins is not None:
        non_target = 1.0 - F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
        logits = logits + margins[targets].to(logits.dtype).unsqueeze(1) * non_target
    return F.cross_entropy(logits, targets, reduction="none")


def smoothed_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """``1 - lambda`` on the label and ``lambda / (C - 1)`` on every other class."""
    off = smoothing / (num_classes - 1)
    targets = torch.full((labels.numel(), num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample CE against a probability vector."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked entries; zero (with a graph) when none is selected."""
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def decoupled_smoothing_losses(labeled_aux: torch.Tensor, labels: torch.Tensor,
                               strong_aux: torch.Tensor, pseudo: torch.Tensor,
                               selected: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The auxiliary head's two losses (DLS): ``L_x' = CE(h'(x), y)`` and ``L_u'`` = mean over
    selected strong-view samples of CE against the smoothed pseudo-label. ``strong_aux`` may
    hold several views (stacked in order), each aligned with ``pseudo`` / ``selected``."""
    views = strong_aux.shape[0] // pseudo.shape[0]
    soft = smoothed_targets(pseudo, labeled_aux.shape[-1], smoothing).repeat(views, 1)
    loss_x_aux = F.cross_entropy(labeled_aux, labels)
    loss_u_aux = masked_mean(soft_cross_entropy(strong_aux, soft), selected.repeat(views))
    return loss_x_aux, loss_u_aux


def aux_weights(aux_logits: torch.Tensor, min_confidence: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Auxiliary confidence ``c'`` of each sample and its L_u weight ``c' [c' >= th_min]``."""
    confidence = aux_logits.detach().softmax(dim=-1).max(dim=-1).values
    return confidence, confidence * (confidence >= min_confidence).float()
