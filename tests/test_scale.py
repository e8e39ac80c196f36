"""Training at scale: gradient accumulation, activation checkpointing, optimizers and
learning-rate schedules (worked out by hand), and CUDA-only checks (skipped without CUDA)."""

import math

import pytest
import torch
from torch import nn

from finessl.builder import build_run
from finessl.config import ModelConfig, TrainConfig, apply_overrides, load_preset
from finessl.engine.optim import build_optimizer, lr_factor, parameter_groups
from finessl.engine.trainer import Trainer
from finessl.models import build_model
from finessl.run import seed_everything

from helpers import model_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def smoke(**overrides):
    base = {"train.tensorboard": "false", "data.num_workers": "0", "train.steps": "4",
            "train.steps_per_epoch": "4", "train.batch_size": "8"}
    return apply_overrides(load_preset("smoke"), {**base, **overrides})


def trained(config, steps=2):
    seed_everything(config.seed)
    pieces = build_run(config)
    trainer = Trainer(config, pieces.model, pieces.algorithm, pieces.data)
    per_epoch = config.train.steps_per_epoch
    batches = (b for epoch in range(steps // per_epoch + 1) for b in trainer.batches(epoch, 0))
    logs = [trainer.train_step(next(batches)) for _ in range(steps)]
    return trainer, pieces, logs


@pytest.mark.parametrize("algorithm", ["fixmatch", "supervised"])
def test_accumulation_equals_one_large_batch_for_per_sample_losses(algorithm):
    """batch 8 in one go vs 4 micro-batches of 2: the same images, and the same weights after
    two optimizer steps (the supervised loss and FixMatch's thresholded unlabeled loss are
    per-sample means)."""
    seed_everything(0)
    initial = build_run(smoke()).model.trainable_state_dict()
    _, one, _ = trained(smoke(**{"algorithm.name": algorithm}))
    _, four, _ = trained(smoke(**{"algorithm.name": algorithm, "train.accumulate": "4"}))
    a, b = one.model.trainable_state_dict(), four.model.trainable_state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key
    assert any(not torch.equal(a[k], initial[k]) for k in a)  # training did move them


def test_accumulation_updates_per_sample_state_once_per_micro_batch_in_order():
    """FlexMatch: each micro-batch updates the latest confident label of its samples (the
    same records as one large batch); the thresholds of later micro-batches already see
    the earlier ones' updates, so its weights are not identical (documented)."""
    _, one, _ = trained(smoke(**{"algorithm.name": "flexmatch"}), steps=1)
    _, four, _ = trained(smoke(**{"algorithm.name": "flexmatch", "train.accumulate": "4"}), steps=1)
    assert torch.equal(one.algorithm.selected_label, four.algorithm.selected_label)
    assert (one.algorithm.selected_label >= 0).any()
    assert int(four.algorithm.steps) == 4 * int(one.algorithm.steps) == 4


def test_batch_must_divide_into_micro_batches():
    from finessl.errors import ConfigError

    config = smoke(**{"train.accumulate": "3"})
    pieces = build_run(config)
    with pytest.raises(ConfigError, match="multiple of"):
        Trainer(config, pieces.model, pieces.algorithm, pieces.data)


@pytest.mark.parametrize("peft", ["vpt-deep", "full", "lora"])
def test_checkpointed_gradients_equal_stored_ones(peft):
    def gradients(checkpointing):
        torch.manual_seed(0)
        config = model_config(backbone="tiny-vit", pretrained="none", peft=peft, vpt_tokens=3,
                             image_size=32, grad_checkpointing=checkpointing)
        model = build_model(config, num_classes=4).train()
        x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        model(x).logsumexp(-1).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 2
    for key in plain:
        assert torch.allclose(plain[key], checkpointed[key], atol=1e-6), key


def test_checkpointing_is_per_block_and_off_without_gradients(monkeypatch):
    import finessl.models.vit as vit

    calls = []
    original = vit.checkpoint
    monkeypatch.setattr(vit, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    config = model_config(backbone="tiny-vit", pretrained="none", peft="vpt-deep", vpt_tokens=3,
                         image_size=32, grad_checkpointing=True)
    model = build_model(config, num_classes=4)
    model(torch.randn(2, 3, 32, 32))
    assert len(calls) == model.backbone.num_layers
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert len(calls) == model.backbone.num_layers


def test_timm_cnn_checkpointing_and_unsupported_backbones():
    from finessl.errors import ConfigError

    model = build_model(ModelConfig(backbone="timm:resnet18", pretrained="none", peft="full",
                                    image_size=32, grad_checkpointing=True), num_classes=3)
    assert model.backbone.model.grad_checkpointing
    with pytest.raises(ConfigError, match="not supported"):
        build_model(ModelConfig(backbone="tiny-resnet", pretrained="none", peft="bn-tuning",
                                grad_checkpointing=True), num_classes=3)


# --------------------------------------------------------------------------- schedules


def cfg(**values):
    return TrainConfig(**{"steps": 1000, "steps_per_epoch": 100, **values})


def test_reference_cosine_moves_once_per_epoch():
    c = cfg()
    for step, epoch in [(0, 0), (99, 0), (100, 1), (150, 1), (999, 9)]:
        assert lr_factor(step, c) == pytest.approx(0.5 * (1 + math.cos(math.pi * epoch / 10)))


def test_per_step_schedules_and_warmup_by_hand():
    c = cfg(schedule_unit="step", warmup_steps=10)
    assert lr_factor(0, c) == pytest.approx(1 / 11) and lr_factor(9, c) == pytest.approx(10 / 11)
    assert lr_factor(10, c) == pytest.approx(1.0)
    assert lr_factor(505, c) == pytest.approx(0.5 * (1 + math.cos(math.pi * 495 / 990)))
    linear = cfg(schedule="linear", schedule_unit="step")
    assert lr_factor(250, linear) == pytest.approx(0.75)
    assert lr_factor(999, cfg(schedule="constant")) == 1.0
    assert lr_factor(350, cfg(schedule="linear")) == pytest.approx(1 - 3 / 10)  # epoch 3 of 10


def test_the_trainer_applies_the_schedule_per_step():
    config = smoke(**{"train.steps": "6", "train.steps_per_epoch": "2", "train.lr": "0.1",
                      "train.warmup_steps": "1"})
    trainer, _, logs = trained(config, steps=4)
    want = [0.1 * lr_factor(k, config.train) for k in range(4)]
    assert [entry["lr"] for entry in logs] == pytest.approx(want)
    assert want[0] == pytest.approx(0.05)
    assert want[2] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 3)))


def test_weight_decay_groups():
    model = build_model(model_config(backbone="tiny-vit", pretrained="none", peft="vpt-deep+bitfit",
                                     vpt_tokens=3, image_size=32), num_classes=4)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, exempt = parameter_groups(model, 5e-4, decay_all=False)
    assert exempt["weight_decay"] == 0.0 and decayed["weight_decay"] == 5e-4
    exempt_names = {names[id(p)] for p in exempt["params"]}
    assert "backbone.peft.vpt_deep.prompts" in exempt_names and "head.scale" in exempt_names
    assert all(names[id(p)].endswith("weight") for p in decayed["params"])  # the head matrices
    sgd = build_optimizer(model, TrainConfig())
    assert len(sgd.param_groups) == 1 and sgd.param_groups[0]["weight_decay"] == 5e-4
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3, betas=[0.8, 0.99], eps=1e-6))
    assert isinstance(adamw, torch.optim.AdamW) and len(adamw.param_groups) == 2
    assert adamw.param_groups[0]["betas"] == (0.8, 0.99) and adamw.param_groups[1]["weight_decay"] == 0
    everything = build_optimizer(model, TrainConfig(optimizer="adamw", decay_all=True))
    assert len(everything.param_groups) == 1


def test_adamw_trains(tmp_path):
    import finessl

    config = smoke(**{"train.optimizer": "adamw", "train.lr": "0.001", "train.warmup_steps": "2",
                      "train.schedule": "linear", "train.schedule_unit": "step"})
    final = finessl.train(config, tmp_path / "run", callbacks=[])
    assert final["steps"] == 4


# --------------------------------------------------------------------------- CUDA only


@cuda
def test_fp16_with_grad_scaler_on_cuda():
    config = smoke(**{"train.device": "cuda", "train.precision": "fp16"})
    trainer, _, logs = trained(config, steps=2)
    assert trainer.scaler.is_enabled() and math.isfinite(logs[-1]["loss"])


@cuda
def test_gpu_augment_on_cuda_tensors():
    from finessl.data.gpu_augment import BatchAugment

    images = torch.randint(0, 256, (8, 3, 40, 40), dtype=torch.uint8, device="cuda")
    out = BatchAugment(32, (0.5,) * 3, (0.5,) * 3, strong=True)(
        images, torch.Generator("cuda").manual_seed(0))
    assert out.is_cuda and out.shape == (8, 3, 32, 32) and torch.isfinite(out).all()


@cuda
def test_channels_last_cnn_on_cuda():
    config = smoke(**{"train.device": "cuda", "model.backbone": "tiny-resnet",
                      "model.peft": "bn-tuning", "train.channels_last": "true"})
    trainer, _, logs = trained(config, steps=1)
    conv = next(m for m in trainer.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


@cuda
def test_compiled_model_on_cuda():
    config = smoke(**{"train.device": "cuda", "train.compile": "true"})
    _, _, logs = trained(config, steps=2)
    assert math.isfinite(logs[-1]["loss"])
