"""Few classes: the mechanism of the reference rule's collapse, and the default that avoids it.

Hand-worked values: after one step selecting counts [1, 8] on two classes, the reference
pace gives beta = [1/8, 1], scale = 8 (1 - 1/8) = 7 and Delta_0 = 7 (7/8) / (9/8) = 5.444;
the smoothed pace gives f = 0.99 [0.5, 0.5] + 0.01 [1/9, 8/9], beta_0 = f_0 / f_1.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import finessl
from finessl.algorithms import Batch, build_algorithm
from finessl.algorithms.components import (
    ClassPace,
    SmoothedPace,
    aux_weights,
    balanced_margins,
    build_pace,
)
from finessl.config import AlgorithmConfig, ModelConfig, apply_overrides, load_preset
from finessl.errors import ConfigError
from finessl.models.backbone_base import ModuleBackbone
from finessl.models.model import build_model


def select(pace, counts):
    labels = torch.tensor([k for k, n in enumerate(counts) for _ in range(n)])
    pace.update(torch.arange(len(labels)), labels, torch.ones(len(labels), dtype=torch.bool))


def test_reference_pace_turns_a_handful_of_selections_into_a_near_maximal_margin():
    pace = ClassPace(20, 2)
    select(pace, [1, 8])
    margins = balanced_margins(pace.refresh(), 8.0)
    assert margins.tolist() == pytest.approx([7 * (7 / 8) / (9 / 8), 0.0])  # 5.444 after one step
    pace.reset()  # the next epoch starts from nothing again
    select(pace, [3, 0])
    assert balanced_margins(pace.refresh(), 8.0).tolist() == pytest.approx([0.0, 8.0])  # flipped


def test_smoothed_pace_moves_slowly_and_never_resets():
    pace = SmoothedPace(20, 2, momentum=0.99)
    assert balanced_margins(pace.refresh(), 8.0).tolist() == [0.0, 0.0]  # uniform start
    select(pace, [1, 8])
    f = [0.99 * 0.5 + 0.01 / 9, 0.99 * 0.5 + 0.01 * 8 / 9]
    beta0 = f[0] / f[1]
    margin0 = 8 * (1 - beta0) * (1 - beta0) / (1 + beta0)
    assert pace.frequency.tolist() == pytest.approx(f)
    assert balanced_margins(pace.refresh(), 8.0).tolist() == pytest.approx([margin0, 0.0], rel=1e-4)
    assert margin0 < 0.01
    pace.reset()
    assert pace.frequency.tolist() == pytest.approx(f)  # carried over the epoch boundary
    select(pace, [0, 0])  # a step without selections leaves it alone
    assert pace.frequency.tolist() == pytest.approx(f)
    for _ in range(1000):  # a persistent imbalance still shows up
        select(pace, [1, 3])
    assert pace.refresh().tolist() == pytest.approx([1 / 3, 1.0], rel=1e-3)


def test_weights_above_chance_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.75, 0.25], [0.1, 0.9], [1.0, 1e-9]]))
    confidence, weight = aux_weights(logits, 0.0, above_chance=True)
    assert confidence.tolist() == pytest.approx([0.5, 0.75, 0.9, 1.0])
    assert weight.tolist() == pytest.approx([0.0, 0.5, 0.8, 1.0], abs=1e-6)
    _, plain = aux_weights(logits, 0.0)
    assert plain.tolist() == pytest.approx([0.5, 0.75, 0.9, 1.0])


@pytest.mark.parametrize("num_classes, pace, above", [(2, SmoothedPace, True), (5, SmoothedPace, True),
                                                       (9, SmoothedPace, True), (10, ClassPace, False),
                                                       (100, ClassPace, False)])
def test_auto_uses_the_few_class_forms_below_ten_classes(num_classes, pace, above):
    a = build_algorithm(AlgorithmConfig(name="finessl"), num_classes, 16)
    assert isinstance(a.pace, pace) and a.above_chance is above
    ref = build_algorithm(AlgorithmConfig(name="finessl", pace="reference", aux_weight="confidence"),
                          num_classes, 16)
    assert isinstance(ref.pace, ClassPace) and not ref.above_chance  # still selectable
    assert isinstance(build_pace("smoothed", 16, 100, 0.99), SmoothedPace)
    with pytest.raises(ConfigError, match="reference, smoothed, auto"):
        build_pace("slow", 16, num_classes, 0.99)


def test_auto_step_equals_the_reference_step_from_ten_classes_on():
    def step(**rules):
        torch.manual_seed(0)
        model = build_model(ModelConfig(peft="full"), 10,
                            backbone=ModuleBackbone(nn.Linear(6, 6), num_features=6))
        a = build_algorithm(AlgorithmConfig(name="finessl", threshold=0.2, **rules), 10, 12)
        a.pace.assign(torch.tensor([0, 0, 0, 1, 1, 2, -1, -1, -1, -1, -1, -1]))
        g = torch.Generator().manual_seed(1)
        batch = Batch(torch.randn(4, 6, generator=g), torch.tensor([0, 3, 5, 9]), torch.arange(4),
                      torch.randn(4, 6, generator=g), [torch.randn(4, 6, generator=g) for _ in range(2)])
        return a.step(model, batch)

    auto, reference = step(), step(pace="reference", aux_weight="confidence")
    assert set(auto.terms) == set(reference.terms)
    for key in auto.terms:
        assert torch.equal(auto.terms[key], reference.terms[key]), key


class Pairs(TensorDataset):
    def __getitem__(self, i):
        sample, label = super().__getitem__(i)
        return sample, int(label)


def digits_pair(a=1, b=7):
    """Two real digit classes (scikit-learn's 8x8 digits) as 64-d vectors."""
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    keep = np.isin(y, [a, b])
    x = torch.tensor(x[keep] / 16.0, dtype=torch.float32)
    y = torch.tensor((y[keep] == b).astype(int))
    n = len(y) * 3 // 4
    return finessl.SourceData(["one", "seven"], Pairs(x[:n], y[:n]), y[:n].numpy(), Pairs(x[n:], y[n:]))


@pytest.mark.parametrize("rules, collapses", [
    ({"algorithm.pace": "reference", "algorithm.aux_weight": "confidence"}, True),
    ({}, False),  # the default (auto): smoothed pace, weights above chance
])
def test_two_class_run_collapses_with_the_reference_rule_only(tmp_path, rules, collapses):
    """4 labels per class, a small MLP on real digits: the authors' rule predicts one class
    for the whole test set; the default keeps both classes."""
    noise = lambda scale: (lambda v: v + scale * torch.randn_like(v))  # noqa: E731
    transforms = finessl.Transforms(weak=noise(0.05), strong=noise(0.4), test=lambda v: v)
    config = apply_overrides(load_preset("smoke"), {
        "model.peft": "full", "data.labels_per_class": "4", "train.steps": "90",
        "train.steps_per_epoch": "30", "train.batch_size": "8", "train.tensorboard": "false",
        **rules})
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    final = finessl.train(config, tmp_path / "run", backbone=backbone, source=digits_pair(),
                          transforms=transforms, callbacks=[])
    if collapses:
        accuracies = list(final["per_class_acc"].values())
        assert min(accuracies) == 0.0 and max(accuracies) == 100.0
    else:
        assert min(final["per_class_acc"].values()) > 60.0 and final["top1"] > 80.0
