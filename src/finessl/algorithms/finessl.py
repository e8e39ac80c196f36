"""FineSSL (Gan & Wei, ICML 2024): balanced margin softmax + decoupled label smoothing.

One step, as in the spec (``shared/FINESSL_SPEC.md`` section 3):

1. beta from the class pace (per-epoch counts of confident pseudo-labels);
2. margins ``Delta_k = alpha (max beta - min beta) (1 - beta_k) / (1 + beta_k)``;
3. ``L_x = CE_BMS(h(z_x), y)`` and ``L_x' = CE(h'(sg z_x), y)``;
4. pseudo-labels and confidence ``c`` from the main head on the weak view, auxiliary
   confidence ``c'`` from the auxiliary head (both without gradients);
5. ``L_u = mean over all strong views and samples of c' [c' >= th_min] CE_BMS(h(z_s), yhat)``;
6. ``L_u' = mean over samples with c >= tau of CE(h'(sg z_s), smoothed yhat)``;
7. pace update for samples with ``c >= tau``;
8. ``L = L_x + L_x' + gamma L_u + L_u'``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from finessl.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Batch,
    StepResult,
    forward_views,
    pseudo_label_accuracy,
)
from finessl.algorithms.components import (
    ClassPace,
    balanced_margins,
    margin_cross_entropy,
    masked_mean,
    smoothed_targets,
    soft_cross_entropy,
)
from finessl.config import AlgorithmConfig


@ALGORITHMS.register("finessl")
class FineSSL(Algorithm):
    name = "finessl"
    default_unlabeled_weight = 3.0

    def __init__(self, config: AlgorithmConfig, num_classes: int, num_unlabeled: int) -> None:
        super().__init__(config, num_classes, num_unlabeled)
        self.pace = ClassPace(num_unlabeled, num_classes)

    @classmethod
    def strong_views(cls, config: AlgorithmConfig) -> int:
        return config.strong_views

    def on_epoch_start(self, epoch: int) -> None:
        self.pace.reset()

    def margins(self) -> torch.Tensor:
        return balanced_margins(self.pace.refresh(), self.config.margin_alpha)

    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        cfg = self.config
        margins = self.margins()
        feats = forward_views(model, batch)
        head, aux_head = model.head, model.aux_head

        loss_x = margin_cross_entropy(head(feats.labeled), batch.labels, margins).mean()
        loss_x_aux = F.cross_entropy(aux_head(feats.labeled.detach()), batch.labels)

        with torch.no_grad():
            confidence, pseudo = torch.softmax(head(feats.weak), dim=-1).max(dim=-1)
            aux_confidence = torch.softmax(aux_head(feats.weak), dim=-1).max(dim=-1).values
            weight = aux_confidence * (aux_confidence >= cfg.aux_min_confidence).float()
            selected = confidence >= cfg.threshold
            soft = smoothed_targets(pseudo, self.num_classes, cfg.smoothing)

        strong = torch.cat(feats.strong)
        views = len(feats.strong)
        pseudo_v, weight_v, selected_v = pseudo.repeat(views), weight.repeat(views), selected.repeat(views)
        loss_u = (weight_v * margin_cross_entropy(head(strong), pseudo_v, margins)).mean()
        loss_u_aux = masked_mean(soft_cross_entropy(aux_head(strong.detach()), soft.repeat(views, 1)),
                                 selected_v)

        self.pace.update(batch.unlabeled_index, pseudo, selected)
        loss = loss_x + loss_x_aux + self.unlabeled_weight * loss_u + loss_u_aux
        logs = {
            "loss": loss.item(), "loss_x": loss_x.item(), "loss_x_aux": loss_x_aux.item(),
            "loss_u": loss_u.item(), "loss_u_aux": loss_u_aux.item(),
            "mask": selected.float().mean().item(), "conf": confidence.mean().item(),
            "aux_conf": aux_confidence.mean().item(), "margin_max": margins.max().item(),
        }
        logs.update(pseudo_label_accuracy(pseudo, batch.unlabeled_labels, selected))
        terms = {"loss_x": loss_x, "loss_x_aux": loss_x_aux, "loss_u": loss_u,
                 "loss_u_aux": loss_u_aux}
        return StepResult(loss, logs, terms)
