"""FineSSL's building blocks, usable by any algorithm: class pace, balanced margin, smoothing."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from finessl.errors import ConfigError
from finessl.options import EVERY_METHOD, method_options, opt


# FineSSL's two parts plug into every algorithm (``algorithm.bms`` / ``algorithm.dls`` turn
# them on), so their settings are sections of every algorithm's configuration.
@method_options("algorithm", "margins", used_by=EVERY_METHOD,
                aliases={"margin_alpha": "alpha", "pace": "pace", "pace_momentum": "pace_momentum",
                         "bms_labeled": "on_labeled", "margin_fixed": "fixed"})
@dataclass
class MarginOptions:
    """Balanced margin softmax (algorithm.bms): the margins and the class pace behind them."""

    alpha: float = opt(8.0, "balanced margin scale alpha", ge=0)
    pace: str = opt("auto", "class pace behind the margins: reference (per-epoch counts), "
                            "smoothed (running estimate), auto (smoothed below 10 classes)",
                    choices=("reference", "smoothed", "auto"))
    pace_momentum: float = opt(0.99, "smoothed pace: EMA momentum per step", ge=0, lt=1)
    on_labeled: bool = opt(True, "margins on the labeled loss too (false: unlabeled only)")
    fixed: bool = opt(False, "margin scale alpha instead of alpha (max beta - min beta)")


@method_options("algorithm", "aux_head", used_by=EVERY_METHOD,
                aliases={"aux_weight": "weight", "smoothing": "smoothing",
                         "aux_min_confidence": "min_confidence", "aux_stop_gradient": "stop_gradient"})
@dataclass
class AuxHeadOptions:
    """The auxiliary head with decoupled label smoothing (algorithm.dls)."""

    weight: str = opt("auto", "L_u weights: confidence (c'), above_chance ((c' - 1/C) / "
                              "(1 - 1/C)), auto (above_chance below 10 classes)",
                      choices=("confidence", "above_chance", "auto"))
    smoothing: float = opt(0.5, "decoupled label smoothing lambda of the auxiliary targets",
                           ge=0, lt=1)
    min_confidence: float = opt(0.0, "minimum auxiliary confidence th_min for L_u", ge=0, le=1)
    stop_gradient: bool = opt(True, "the auxiliary head sees stop-gradient features")


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
        # sigma, kept as selections change (not re-counted over all N every step); derived
        # from ``selected``, so not saved: recomputed when a checkpoint is loaded
        self.register_buffer("sigma", torch.zeros(num_classes, dtype=torch.long), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _: module.recount())

    def assign(self, selected: torch.Tensor) -> None:
        """Sets every sample's selection at once (``-1`` = none)."""
        self.selected.copy_(selected)
        self.recount()

    def recount(self) -> None:
        chosen = self.selected[self.selected >= 0]
        self.sigma.copy_(torch.bincount(chosen, minlength=self.beta.numel()))

    def reset(self) -> None:
        self.selected.fill_(-1)
        self.beta.zero_()
        self.sigma.zero_()

    def counts(self) -> torch.Tensor:
        return self.sigma

    def refresh(self) -> torch.Tensor:
        """Recomputes beta from the current selections and returns it."""
        sigma = self.counts()
        if sigma.sum() > 0:
            self.beta.copy_(sigma.float() / sigma.max())
        return self.beta

    def update(self, indices: torch.Tensor, pseudo_labels: torch.Tensor, mask: torch.Tensor) -> None:
        changed = indices[mask].unique()  # a sample twice in a batch is counted once
        before = self.selected[changed]
        self.selected[indices[mask]] = pseudo_labels[mask]
        after = self.selected[changed]
        size = self.beta.numel()
        self.sigma += torch.bincount(after, minlength=size) - torch.bincount(before[before >= 0],
                                                                             minlength=size)


class SmoothedPace(nn.Module):
    """The class pace as a running estimate instead of per-epoch counts (few classes).

    ``frequency`` is an EMA (``momentum`` per step) of the class distribution of the
    confidently pseudo-labeled samples of each step, starting uniform; ``beta_k =
    frequency_k / max_j frequency_j``. Nothing resets at epoch boundaries, so early, tiny
    and noisy counts never drive the margins: they start at 0 (uniform estimate) and grow
    only as a class imbalance persists over many steps.
    """

    def __init__(self, num_unlabeled: int, num_classes: int, momentum: float = 0.99) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("frequency", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("beta", torch.ones(num_classes))

    def reset(self) -> None:
        """The estimate carries over epochs."""

    def counts(self) -> torch.Tensor:
        return self.frequency

    def refresh(self) -> torch.Tensor:
        self.beta.copy_(self.frequency / self.frequency.max())
        return self.beta

    def update(self, indices: torch.Tensor, pseudo_labels: torch.Tensor, mask: torch.Tensor) -> None:
        if mask.any():
            hist = torch.bincount(pseudo_labels[mask], minlength=self.frequency.numel()).float()
            self.frequency.mul_(self.momentum).add_((1 - self.momentum) * hist / hist.sum())


# Below this many classes the ``auto`` rules switch to their few-class forms (smoothed
# pace, weights above chance); the paper's settings (10 to 1,000 classes) keep the reference.
FEW_CLASSES_BELOW = 10
PACES = ("reference", "smoothed", "auto")
AUX_WEIGHTS = ("confidence", "above_chance", "auto")


def resolve_auto(rule: str, choices: tuple[str, ...], few_class_form: str, num_classes: int,
                 key: str) -> str:
    if rule not in choices:
        raise ConfigError(f"algorithm.{key} must be one of {', '.join(choices)}, got {rule!r}")
    if rule != "auto":
        return rule
    return few_class_form if num_classes < FEW_CLASSES_BELOW else choices[0]


def build_pace(rule: str, num_unlabeled: int, num_classes: int, momentum: float) -> nn.Module:
    """The class pace of ``algorithm.margins.pace``: reference (per-epoch counts), smoothed, auto."""
    rule = resolve_auto(rule, PACES, "smoothed", num_classes, "margins.pace")
    if rule == "smoothed":
        return SmoothedPace(num_unlabeled, num_classes, momentum)
    return ClassPace(num_unlabeled, num_classes)


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


def aux_weights(aux_logits: torch.Tensor, min_confidence: float,
                above_chance: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Auxiliary confidence ``c'`` of each sample and its L_u weight ``c' [c' >= th_min]``.

    ``above_chance`` weights by how far ``c'`` is above chance instead,
    ``(c' - 1/C) / (1 - 1/C)``: with few classes ``c'`` never falls below ``1/C`` (0.5 for
    two), so plain ``c'`` gives every unsure sample a large weight."""
    confidence = aux_logits.detach().softmax(dim=-1).max(dim=-1).values
    weight = confidence
    if above_chance:
        chance = 1.0 / aux_logits.shape[-1]
        weight = ((confidence - chance) / (1.0 - chance)).clamp(min=0.0)
    return confidence, weight * (confidence >= min_confidence).float()
