"""Metrics against hand-worked values."""

import math

import pytest
import torch

from finessl.eval.metrics import classification_metrics


def logits_from(probs):
    return torch.tensor(probs).log()


def test_ece_on_a_small_known_example():
    probs = [[0.9, 0.1], [0.19, 0.81], [0.3, 0.7], [0.39, 0.61]]
    labels = torch.tensor([0, 0, 1, 0])
    # confidences 0.9 (right), 0.81 (wrong), 0.7 (right), 0.61 (wrong), each alone in one of
    # 15 equal-width bins: ECE = (0.1 + 0.81 + 0.3 + 0.61) / 4
    m = classification_metrics(logits_from(probs), labels)
    assert m["ece"] == pytest.approx((0.1 + 0.81 + 0.3 + 0.61) / 4, abs=1e-6)
    nll = -(math.log(0.9) + math.log(0.19) + math.log(0.7) + math.log(0.39)) / 4
    assert m["nll"] == pytest.approx(nll, rel=1e-5)


def test_ece_pools_a_bin():
    # both in the (0.8667, 0.9333] bin: mean confidence 0.9, accuracy 0.5 -> ECE 0.4
    m = classification_metrics(logits_from([[0.88, 0.12], [0.92, 0.08]]), torch.tensor([0, 1]))
    assert m["ece"] == pytest.approx(0.4, abs=1e-6)


def test_balanced_accuracy_with_unequal_classes():
    preds = [0, 0, 0, 1, 1, 0]
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    logits = torch.nn.functional.one_hot(torch.tensor(preds), 3).float() * 5
    m = classification_metrics(logits, labels)
    assert m["top1"] == pytest.approx(400 / 6)
    assert m["balanced_acc"] == pytest.approx((75 + 50) / 2)  # class 2 absent: not averaged
    assert m["per_class_acc"] == [75.0, 50.0, None]


def test_top5_only_with_more_than_five_classes():
    logits = torch.arange(7.0).repeat(3, 1)
    m = classification_metrics(logits, torch.tensor([6, 2, 0]))
    assert m["top1"] == pytest.approx(100 / 3) and m["top5"] == pytest.approx(200 / 3)
    assert "top5" not in classification_metrics(torch.zeros(2, 3), torch.tensor([0, 1]))
