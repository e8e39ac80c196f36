"""SemiKD: the adaptive balance on hand-worked numbers, and `finessl distill` end to end."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import finessl
from finessl.algorithms import Batch, build_algorithm
from finessl.algorithms.semikd import Teacher, updated_balance
from finessl.config import AlgorithmConfig, ModelConfig
from finessl.models.backbone_base import ModuleBackbone
from finessl.models.model import build_model

C = 3


def test_balance_update_rule():
    assert updated_balance(0.5, 2.0) == pytest.approx(0.99 * 0.5 + 0.01 * 2.0 * 0.5)  # 0.505
    assert updated_balance(0.5, 0.5) == pytest.approx(0.4975)
    assert updated_balance(0.9, 20.0) == 1.0  # clipped
    assert updated_balance(0.0, 5.0) == 0.0


def tiny(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    return build_model(ModelConfig(peft="full"), C, backbone=ModuleBackbone(net, num_features=6))


def test_balance_moves_every_ten_steps_by_the_teacher_student_ratio():
    algo = build_algorithm(AlgorithmConfig(name="semikd"), C, 40)
    teacher_model = tiny(1)
    algo.teacher = Teacher(teacher_model, 2, (0.0,) * 3, (1.0,) * 3, (0.0,) * 3, (1.0,) * 3)
    student = tiny(2)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 11):
        batch = Batch(torch.randn(4, 3, 2, 2, generator=g), torch.tensor([0, 1, 2, 0]),
                      torch.arange(4) + 4 * step % 40, torch.randn(4, 3, 2, 2, generator=g),
                      [torch.randn(4, 3, 2, 2, generator=g)])
        before = algo.balance.item()
        result = algo.step(student, batch)
        if step < 10:
            assert algo.balance.item() == 0.5
    # Step 10: r = CE(teacher weak -> teacher strong) / CE(student weak -> student strong)
    with torch.no_grad():
        pt = teacher_model(batch.weak).softmax(-1)
        teacher_ce = -(pt * teacher_model(batch.strong[0]).log_softmax(-1)).sum(-1).mean()
        ps = student(batch.weak).softmax(-1)
        student_ce = -(ps * student(batch.strong[0]).log_softmax(-1)).sum(-1).mean()
    ratio = (teacher_ce / student_ce).item()
    assert algo.balance.item() == pytest.approx(0.99 * before + 0.01 * ratio * before, rel=1e-5)
    # The loss mixes distillation and self-training with the balance of this step, gamma 5
    t = result.terms
    expected = t["loss_x"] + t["loss_x_aux"] + 5 * (0.5 * (t["kd"] + t["kd_aux"]) +
                                                   0.5 * (t["loss_u"] + t["loss_u_aux"]))
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_distill_end_to_end(tmp_path):
    teacher = tmp_path / "teacher"
    finessl.train("smoke", teacher, callbacks=[])
    student = tmp_path / "student"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "finessl", "distill", "--teacher", str(teacher), "--output",
         str(student), "--model.backbone", "timm:test_vit", "--model.pretrained", "none",
         "--model.image_size", "32", "--train.steps", "12", "--train.steps_per_epoch", "6",
         "--algorithm.uratio", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    final = json.loads((student / "final.json").read_text())
    assert final["algorithm"] == "semikd" and final["steps"] == 12
    logged = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    balances = [r["balance"] for r in logged if r.get("kind") == "train" and "balance" in r]
    assert balances[0] == 0.5 and balances[-1] != 0.5  # moved at step 10
    state = torch.load(student / "state.pt", weights_only=False)["algorithm"]
    assert {"balance", "steps", "pace.selected"} <= set(state)
    predictor = finessl.load(student)
    assert predictor.classes == finessl.load(teacher).classes
