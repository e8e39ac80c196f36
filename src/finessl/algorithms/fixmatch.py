"""FixMatch (Sohn et al., 2020): hard pseudo-labels from the weak view above a threshold."""

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


@ALGORITHMS.register("fixmatch")
class FixMatch(Algorithm):
    """``L = CE(x, y) + w * mean_i [c_i >= tau] CE(strong_i, argmax p_weak_i)``."""

    name = "fixmatch"

    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        feats = forward_views(model, batch)
        head = model.head
        loss_x = F.cross_entropy(head(feats.labeled), batch.labels)
        probs = torch.softmax(head(feats.weak), dim=-1)
        confidence, pseudo = probs.max(dim=-1)
        mask = confidence >= self.config.threshold
        per_sample = F.cross_entropy(head(feats.strong[0]), pseudo, reduction="none")
        loss_u = (per_sample * mask.float()).mean()
        loss = loss_x + self.unlabeled_weight * loss_u
        logs = {"loss": loss.item(), "loss_x": loss_x.item(), "loss_u": loss_u.item(),
                "mask": mask.float().mean().item(), "conf": confidence.mean().item()}
        logs.update(pseudo_label_accuracy(pseudo, batch.unlabeled_labels, mask))
        return StepResult(loss, logs, {"loss_x": loss_x, "loss_u": loss_u})
