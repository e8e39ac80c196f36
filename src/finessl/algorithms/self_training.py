"""The family of pseudo-labeling SSL algorithms, with FineSSL's parts as switches.

One step: supervised loss on the labeled batch; pseudo-labels from the weak view; a
weight per unlabeled sample; a loss on the strong view(s). Each algorithm overrides the
pieces its paper changes:

* ``adjust_probs``   the weak view's class probabilities (SoftMatch's uniform alignment,
                     DebiasPL's debiasing);
* ``mask``           per-sample weight and "selected" flag (FixMatch threshold, FlexMatch
                     curriculum thresholds, FreeMatch self-adaptive, SoftMatch Gaussian);
* ``adjust_strong``  the strong-view logits inside the loss (DebiasPL's adaptive margin);
* ``after_forward``  state that must see this step's logits before any loss (SemiKD's
                     adaptive balance);
* ``extra_losses``   further terms (FreeMatch's fairness loss, SemiKD's distillation);
* ``combine``        how the terms add up to the loss (default: ``L_x + L_x' + gamma L_u
                     + L_u'`` plus extras, gamma ramped up over ``unlabeled_warmup``).

FineSSL's parts, usable on all of them: ``bms`` (balanced margin softmax from the class
pace of selected pseudo-labels) and ``dls`` (auxiliary head on stop-gradient features
trained with smoothed pseudo-labels); ``weighting`` chooses whether L_u weights come
from the algorithm, the auxiliary head's confidence (FineSSL) or the main head's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from finessl.algorithms.base import (
    Algorithm,
    Batch,
    StepResult,
    ViewLogits,
    forward_views,
    pseudo_label_accuracy,
)
from finessl.algorithms.components import (
    AUX_WEIGHTS,
    aux_weights,
    balanced_margins,
    build_pace,
    decoupled_smoothing_losses,
    margin_cross_entropy,
    resolve_auto,
)
from finessl.errors import ConfigError

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import AlgorithmConfig

WEIGHTINGS = ("algorithm", "aux", "main")


class SelfTraining(Algorithm):
    """FixMatch-style step; subclasses override the hooks above."""

    weak_grad = False  # forward the weak view with gradients (Pseudo-Label, SemiKD)
    train_on_weak = False  # the pseudo-label loss is on the weak view itself (Pseudo-Label)

    def __init__(self, config: AlgorithmConfig, num_classes: int, num_unlabeled: int,
                 **context) -> None:
        super().__init__(config, num_classes, num_unlabeled, **context)
        self.bms = self.option(config, "bms")
        self.dls = self.option(config, "dls")
        self.weighting = self.option(config, "weighting")
        self.warmup = self.option(config, "unlabeled_warmup")
        # Views of each image the unlabeled loss is taken on: the weak one (Pseudo-Label) or
        # the strong ones the data pipeline makes (as ``needs`` told it).
        self.views = 1 if self.train_on_weak else self.needs(config).strong_views
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"algorithm.weighting must be one of {', '.join(WEIGHTINGS)}")
        if self.weighting == "aux" and not self.dls:
            raise ConfigError("algorithm.weighting 'aux' needs the auxiliary head (algorithm.dls true)")
        if self.warmup > 0 and not self.total_steps:
            raise ConfigError("algorithm.unlabeled_warmup needs the number of training steps")
        self.margin_options = config.options("margins")
        self.aux_options = config.options("aux_head")
        self.above_chance = resolve_auto(self.aux_options.weight, AUX_WEIGHTS, "above_chance",
                                         num_classes, "aux_head.weight") == "above_chance"
        if self.bms:
            margins = self.margin_options
            self.pace = build_pace(margins.pace, num_unlabeled, num_classes, margins.pace_momentum)
        self.register_buffer("steps", torch.tensor(0))  # steps taken, for warm-ups
        # Pseudo-label diagnostics since the last report (not checkpointed).
        for name in ("diag_selected", "diag_correct", "diag_known"):
            self.register_buffer(name, torch.zeros(num_classes), persistent=False)
        self.register_buffer("diag_sums", torch.zeros(3), persistent=False)  # conf, aux conf, n

    # ------------------------------------------------------------------ hooks

    def adjust_probs(self, probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return probs

    def mask(self, probs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight in [0, 1], selected bool) per sample; default: FixMatch's threshold."""
        selected = probs.max(dim=-1).values >= self.config.threshold
        return selected.float(), selected

    def adjust_strong(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def after_forward(self, out: ViewLogits, batch: Batch) -> None:
        """Called once the views are forwarded, before margins and losses."""

    def extra_losses(self, out: ViewLogits, batch: Batch, weight: torch.Tensor,
                     selected: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def unlabeled_ramp(self) -> float:
        """Weight of L_u at this step: 0 -> 1 linearly over ``unlabeled_warmup`` of training."""
        if self.warmup <= 0:
            return 1.0
        return min(1.0, int(self.steps) / (self.warmup * self.total_steps))

    def combine(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum of terms``, with ``loss_u`` weighted by gamma (times the warm-up ramp)."""
        gamma = self.unlabeled_weight * self.unlabeled_ramp()
        return sum(value if key != "loss_u" else gamma * value for key, value in terms.items())

    # ------------------------------------------------------------------ FineSSL parts

    def on_epoch_start(self, epoch: int) -> None:
        if self.bms:
            self.pace.reset()

    def margin_alpha(self) -> float:
        return self.margin_options.alpha

    def margins(self) -> torch.Tensor | None:
        if not self.bms:
            return None
        beta = self.pace.refresh()
        if self.margin_options.fixed:
            return self.margin_alpha() * (1 - beta) / (1 + beta)
        return balanced_margins(beta, self.margin_alpha())

    # ------------------------------------------------------------------ diagnostics

    def _record(self, pseudo: torch.Tensor, selected: torch.Tensor, truth: torch.Tensor | None):
        C = self.num_classes
        self.diag_selected += torch.bincount(pseudo[selected], minlength=C).float()
        if truth is not None:
            known = selected & (truth >= 0)
            self.diag_known += torch.bincount(pseudo[known], minlength=C).float()
            self.diag_correct += torch.bincount(pseudo[known & (pseudo == truth)], minlength=C).float()

    def _record_confidence(self, confidence: torch.Tensor, aux: torch.Tensor | None) -> None:
        aux_sum = aux.sum().item() if aux is not None else 0.0
        self.diag_sums += torch.tensor([confidence.sum().item(), aux_sum, confidence.numel()],
                                       device=self.diag_sums.device)

    def diagnostics(self) -> dict:
        """Pseudo-label statistics since the last call (then reset): per-class counts of
        selected pseudo-labels, their accuracy where the truth is known, the current
        per-class margins, mean main and auxiliary confidence."""
        conf, aux, n = self.diag_sums.tolist()
        known = self.diag_known
        accuracy = torch.where(known > 0, 100.0 * self.diag_correct / known.clamp(min=1),
                               torch.full_like(known, float("nan")))
        report = {
            "pl_counts": [int(v) for v in self.diag_selected.tolist()],
            "pl_class_acc": [None if v != v else round(v, 2) for v in accuracy.tolist()],
            "pl_acc": (100.0 * self.diag_correct.sum() / known.sum()).item() if known.sum() > 0
            else None,
            "mean_conf": conf / n if n else None,
            "mean_aux_conf": aux / n if n and self.dls else None,
        }
        if self.bms:
            report["margins"] = [round(v, 4) for v in self.margins().tolist()]
        for buffer in (self.diag_selected, self.diag_correct, self.diag_known, self.diag_sums):
            buffer.zero_()
        return report

    # ------------------------------------------------------------------ the step

    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        aux_options = self.aux_options
        out = forward_views(model, batch, weak_grad=self.weak_grad, aux=self.dls,
                            aux_stop_gradient=aux_options.stop_gradient)
        self.after_forward(out, batch)
        margins = self.margins()
        loss_x = margin_cross_entropy(out.labeled, batch.labels,
                                      margins if self.margin_options.on_labeled else None).mean()
        with torch.no_grad():
            # State (EMAs, counts, pace) is updated from the global batch, so every process
            # holds the same state under torchrun; each then keeps its own share.
            dist = self.dist
            logits_w = dist.gather(out.weak.detach())
            index = dist.gather(batch.unlabeled_index)
            probs = self.adjust_probs(logits_w.softmax(dim=-1), logits_w)
            weight, selected = self.mask(probs, Batch(batch.images, batch.labels, index))
            if self.bms:
                self.pace.update(index, probs.argmax(dim=-1), selected)
            truth = None if batch.unlabeled_labels is None else dist.gather(batch.unlabeled_labels)
            self._record(probs.argmax(dim=-1), selected, truth)
            probs, weight, selected = (dist.local_slice(t) for t in (probs, weight, selected))
            confidence, pseudo = probs.max(dim=-1)

        # Pseudo-Label trains on the weak view itself; the others on their strong views.
        strong, strong_aux = (out.weak, out.weak_aux) if self.train_on_weak else (out.strong, out.strong_aux)
        views = self.views
        terms: dict[str, torch.Tensor] = {"loss_x": loss_x}
        logs: dict[str, float] = {}
        aux_confidence = None
        if self.dls:
            aux_confidence, aux_weight = aux_weights(out.weak_aux, aux_options.min_confidence,
                                                     self.above_chance)
            terms["loss_x_aux"], terms["loss_u_aux"] = decoupled_smoothing_losses(
                out.labeled_aux, batch.labels, strong_aux, pseudo, selected, aux_options.smoothing)
            logs["aux_conf"] = aux_confidence.mean().item()
        self._record_confidence(confidence, aux_confidence)
        if self.weighting == "aux":
            weight = aux_weight
        elif self.weighting == "main":
            weight = confidence

        per_sample = margin_cross_entropy(self.adjust_strong(strong), pseudo.repeat(views), margins)
        terms["loss_u"] = (weight.repeat(views) * per_sample).mean()
        terms.update(self.extra_losses(out, batch, weight, selected))
        loss = self.combine(terms)
        self.steps += 1
        logs.update({key: value.item() for key, value in terms.items()})
        logs.update({"loss": loss.item(), "mask": selected.float().mean().item(),
                     "weight": weight.mean().item(), "conf": confidence.mean().item()})
        if margins is not None:
            logs["margin_max"] = margins.max().item()
        logs.update(pseudo_label_accuracy(pseudo, batch.unlabeled_labels, selected))
        return StepResult(loss, logs, terms)
