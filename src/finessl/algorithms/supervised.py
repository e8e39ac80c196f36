"""Labeled data only: the baseline every SSL method has to beat."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from finessl.algorithms.base import ALGORITHMS, Algorithm, Batch, StepResult


@ALGORITHMS.register("supervised")
class Supervised(Algorithm):
    uses_unlabeled = False

    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        logits = model(batch.images)
        loss = F.cross_entropy(logits.float(), batch.labels)
        return StepResult(loss, {"loss": loss.item(), "loss_x": loss.item()})
