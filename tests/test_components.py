"""FineSSL's components against values worked out by hand from the formulas of docs/method.md."""

import math

import pytest
import torch

from finessl.algorithms.components import (
    ClassPace,
    balanced_margins,
    margin_cross_entropy,
    masked_mean,
    smoothed_targets,
)


def test_margins_for_counts_4_2_0():
    pace = ClassPace(num_unlabeled=6, num_classes=3)
    pace.update(torch.arange(6), torch.tensor([0, 0, 0, 0, 1, 1]), torch.ones(6, dtype=torch.bool))
    beta = pace.refresh()
    assert beta.tolist() == [1.0, 0.5, 0.0]
    margins = balanced_margins(beta, alpha=8.0)
    # scale = 8 * (1 - 0) = 8; Delta = 8 (1 - beta) / (1 + beta)
    assert margins.tolist() == pytest.approx([0.0, 8 / 3, 8.0])


def test_no_margin_when_pace_is_flat_or_empty():
    pace = ClassPace(4, 3)
    assert balanced_margins(pace.refresh(), 8.0).tolist() == [0.0, 0.0, 0.0]
    pace.update(torch.arange(3), torch.tensor([0, 1, 2]), torch.ones(3, dtype=torch.bool))
    assert balanced_margins(pace.refresh(), 8.0).tolist() == [0.0, 0.0, 0.0]


def test_pace_keeps_beta_while_nothing_selected_and_resets():
    pace = ClassPace(4, 2)
    pace.update(torch.tensor([0, 1]), torch.tensor([1, 1]), torch.tensor([True, True]))
    assert pace.refresh().tolist() == [0.0, 1.0]
    # A later selection overwrites a sample's class; unselected samples keep theirs.
    pace.update(torch.tensor([0, 2]), torch.tensor([0, 0]), torch.tensor([True, False]))
    assert pace.selected.tolist() == [0, 1, -1, -1]
    assert pace.refresh().tolist() == [1.0, 1.0]
    pace.reset()
    assert pace.selected.tolist() == [-1] * 4 and pace.beta.tolist() == [0.0, 0.0]


def test_margin_cross_entropy_adds_margin_to_non_target_logits():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    margins = torch.tensor([0.5, 3.0, 1.0])
    # target 1 -> Delta_1 = 3 added to logits 0 and 2: [5, 1, 3]
    expected = -1.0 + math.log(math.exp(5) + math.exp(1) + math.exp(3))
    got = margin_cross_entropy(logits, torch.tensor([1]), margins)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    plain = margin_cross_entropy(logits, torch.tensor([1]), None)
    assert plain.item() == pytest.approx(-1.0 + math.log(math.exp(2) + math.exp(1) + 1), rel=1e-6)


def test_smoothed_target():
    target = smoothed_targets(torch.tensor([2, 0]), num_classes=5, smoothing=0.5)
    assert target[0].tolist() == pytest.approx([0.125, 0.125, 0.5, 0.125, 0.125])
    assert target[1].tolist() == pytest.approx([0.5, 0.125, 0.125, 0.125, 0.125])
    assert target.sum(dim=1).tolist() == pytest.approx([1.0, 1.0])


def test_masked_mean_is_zero_without_selection():
    values = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    assert masked_mean(values, torch.tensor([False, True, True])).item() == 3.0
    empty = masked_mean(values, torch.zeros(3, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()  # still part of the graph
