"""SemiKD: the adaptive balance on hand-worked numbers, and `finessl distill` end to end."""

import json

import pytest
import torch
from torch import nn

import finessl
from finessl.algorithms import Batch, build_algorithm
from finessl.algorithms.semikd import Teacher, updated_balance
from finessl.config import AlgorithmConfig, ModelConfig
from finessl.models.backbone_base import ModuleBackbone
from finessl.models.model import build_model
from finessl.rundir import RunDir

C = 3


def test_balance_update_rule():
    assert updated_balance(0.5, 2.0) == pytest.approx(0.99 * 0.5 + 0.01 * 2.0 * 0.5)  # 0.505
    assert updated_balance(0.5, 0.5) == pytest.approx(0.4975)
    assert updated_balance(0.9, 20.0) == 1.0  # clipped
    assert updated_balance(0.0, 5.0) == 0.0


def tiny(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    model = build_model(ModelConfig(peft="full"), C, backbone=ModuleBackbone(net, num_features=6))
    with torch.no_grad():  # an auxiliary head that differs from the main head
        model.aux_head.weight.add_(0.5 * torch.randn_like(model.aux_head.weight))
    return model


def batches(steps):
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        yield Batch(torch.randn(4, 3, 2, 2, generator=g), torch.tensor([0, 1, 2, 0]),
                    (torch.arange(4) + 4 * step) % 40, torch.randn(4, 3, 2, 2, generator=g),
                    [torch.randn(4, 3, 2, 2, generator=g)])


def own_ce(model, batch, aux=False):
    """Mean CE of strong-view logits against the model's own weak-view arg-max."""
    with torch.no_grad():
        weak, strong = model(batch.weak), model(batch.strong[0])
        return nn.functional.cross_entropy(strong, weak.argmax(-1)).item()


def semikd(teacher_model, **kwargs):
    teacher = Teacher(teacher_model, 2, (0.0,) * 3, (1.0,) * 3, (0.0,) * 3, (1.0,) * 3)
    kwargs = {"pace": "reference", "aux_weight": "confidence", **kwargs}  # the authors' rules
    return build_algorithm(AlgorithmConfig(name="semikd", **kwargs), C, 40, teacher=teacher)


def test_balance_updates_at_step_0_and_every_ten_steps_from_hard_label_ratios():
    teacher_model, student = tiny(1), tiny(2)
    algo = semikd(teacher_model)
    data = list(batches(11))
    # Step 0 updates before its loss, from its own ratio.
    result = algo.step(student, data[0])
    a0 = updated_balance(0.5, own_ce(teacher_model, data[0]) / own_ce(student, data[0]))
    assert algo.balance.item() == pytest.approx(a0, rel=1e-6)
    assert result.logs["balance"] == pytest.approx(a0, rel=1e-6)
    t = result.terms
    expected = t["loss_x"] + t["loss_x_aux"] + 5 * ((1 - a0) * (t["kd"] + t["kd_aux"]) +
                                                   a0 * (t["loss_u"] + t["loss_u_aux"]))
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for batch in data[1:10]:
        algo.step(student, batch)
        assert algo.balance.item() == pytest.approx(a0, rel=1e-6)
    # Step 10: the ratio of the mean CEs over steps 1..10 (equal batch sizes).
    algo.step(student, data[10])
    teacher_mean = sum(own_ce(teacher_model, b) for b in data[1:11]) / 10
    student_mean = sum(own_ce(student, b) for b in data[1:11]) / 10
    assert algo.balance.item() == pytest.approx(updated_balance(a0, teacher_mean / student_mean),
                                                rel=1e-5)


def test_each_student_head_learns_from_the_same_teacher_head():
    teacher_model, student = tiny(1), tiny(2)
    algo = semikd(teacher_model)
    batch = next(batches(1))
    result = algo.step(student, batch)
    with torch.no_grad():
        t_main, t_aux = teacher_model(batch.weak, aux=True)
        s_main, s_aux = student(batch.weak, aux=True)
    soft_ce = lambda logits, teacher: -(teacher.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()  # noqa: E731
    assert result.terms["kd"].item() == pytest.approx(soft_ce(s_main, t_main).item(), rel=1e-5)
    assert result.terms["kd_aux"].item() == pytest.approx(soft_ce(s_aux, t_aux).item(), rel=1e-5)
    assert result.terms["kd_aux"].item() != pytest.approx(soft_ce(s_aux, t_main).item(), rel=1e-3)


def test_margins_scale_with_the_balance_and_switches_work():
    teacher_model, student = tiny(1), tiny(2)
    algo = semikd(teacher_model)
    algo.pace.assign(torch.tensor([0] * 4 + [1] * 2 + [-1] * 34))  # beta 1, 0.5, 0
    result = algo.step(student, next(batches(1)))
    assert result.logs["margin_max"] == pytest.approx(8.0 * algo.balance.item(), rel=1e-6)
    plain = semikd(teacher_model, bms=False).step(student, next(batches(1)))
    assert "margin_max" not in plain.logs
    no_aux = semikd(teacher_model, dls=False, weighting="main").step(student, next(batches(1)))
    assert "kd_aux" not in no_aux.terms and "loss_u_aux" not in no_aux.terms
    from finessl.errors import ConfigError

    with pytest.raises(ConfigError, match="auxiliary head"):
        semikd(teacher_model, dls=False)
    with pytest.raises(ConfigError, match="teacher"):
        build_algorithm(AlgorithmConfig(name="semikd"), C, 40)


def test_distill_end_to_end(tmp_path, finessl_cli):
    teacher = tmp_path / "teacher"
    finessl.train("smoke", teacher, callbacks=[])
    student = tmp_path / "student"
    result = finessl_cli(
        "distill", "--teacher", teacher, "--output", student, "--model.backbone", "timm:test_vit",
        "--model.pretrained", "none", "--model.image_size", "32", "--train.steps", "12",
        "--train.steps_per_epoch", "6", "--algorithm.uratio", "1")
    assert result.returncode == 0, result.stderr
    final = json.loads((student / "final.json").read_text())
    assert final["algorithm"] == "semikd" and final["steps"] == 12
    logged = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    balances = [r["balance"] for r in logged if r.get("kind") == "train" and "balance" in r]
    assert balances[0] != 0.5 and balances[-1] != balances[0]  # moved at steps 0 and 10
    state = RunDir(student).load_state()["algorithm"]
    # 4 classes: the default pace is the smoothed one
    assert {"balance", "steps", "ratio_sums", "pace.frequency"} <= set(state)
    predictor = finessl.load(student)
    assert predictor.classes == finessl.load(teacher).classes
