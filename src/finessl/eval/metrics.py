"""Top-1, balanced accuracy, per-class accuracy, ECE (15 bins) and NLL, via torchmetrics."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device,
                   autocast=contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """Main-head logits and labels for every batch of ``loader`` (model in eval mode)."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for images, targets in loader:
        with autocast():
            logits.append(model(images.to(device, non_blocking=True)).float().cpu())
        labels.append(torch.as_tensor(targets))
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracies in percent; ECE with 15 equal-width bins (L1), NLL in nats."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_calibration_error,
    )

    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=-1)
    preds = probs.argmax(dim=-1)
    present = torch.bincount(labels, minlength=num_classes) > 0
    per_class = multiclass_accuracy(preds, labels, num_classes, average=None)
    metrics = {
        "top1": 100.0 * (preds == labels).float().mean().item(),
        # Balanced accuracy: mean recall over the classes present in the labels.
        "balanced_acc": 100.0 * per_class[present].mean().item(),
        "ece": multiclass_calibration_error(probs, labels, num_classes, n_bins=15, norm="l1").item(),
        "nll": F.cross_entropy(logits.float(), labels).item(),
        "per_class_acc": [round(100.0 * a, 4) if p else None
                          for a, p in zip(per_class.tolist(), present.tolist())],
    }
    if num_classes > 5:
        top5 = logits.topk(5, dim=-1).indices.eq(labels.unsqueeze(1)).any(dim=1)
        metrics["top5"] = 100.0 * top5.float().mean().item()
    return metrics
