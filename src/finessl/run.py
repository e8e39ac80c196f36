"""High-level API: train a run, load it back, evaluate it, predict with it."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from finessl import __version__
from finessl.algorithms import algorithm_class, build_algorithm
from finessl.config import Config, load_config, load_preset
from finessl.data.datasets import SourceData
from finessl.data.ssl_data import SSLData, build_ssl_data
from finessl.engine.checkpoint import load_state, write_json
from finessl.engine.distributed import init_distributed
from finessl.engine.trainer import (
    Callback,
    LogProgress,
    TensorBoardLog,
    Trainer,
    autocast_for,
    resolve_device,
)
from finessl.errors import ConfigError, FinesslError
from finessl.eval.metrics import classification_metrics, predict_logits
from finessl.models import FinesslModel, build_backbone, build_model
from finessl.models.backbone_base import Backbone, ModuleBackbone

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _as_config(config: Config | str | Path | dict) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        from finessl.config import config_from_dict

        return config_from_dict(config)
    path = Path(config)
    return load_config(path) if path.suffix in (".yaml", ".yml") else load_preset(str(config))


def _wrap_backbone(backbone: nn.Module, sample: torch.Tensor | None) -> Backbone:
    """Turns any ``images -> [N, D]`` module into a Backbone, probing D if needed."""
    if isinstance(backbone, Backbone):
        return backbone
    dim = getattr(backbone, "num_features", None)
    if dim is None:
        if sample is None:
            raise ConfigError("give the backbone a num_features attribute")
        with torch.no_grad():
            dim = backbone(sample.unsqueeze(0)).shape[-1]
    return ModuleBackbone(backbone, int(dim))


def train(
    config: Config | str | Path | dict,
    output: str | Path,
    *,
    backbone: nn.Module | None = None,
    source: SourceData | None = None,
    transforms=None,
    callbacks: Sequence[Callback] | None = None,
    resume: bool = False,
) -> dict:
    """Trains one run and returns its final metrics.

    ``config``: a Config, a preset name, a YAML path or a nested dict. ``backbone``: any
    module mapping a batch to ``[N, D]`` features (defaults to ``config.model``).
    ``source``: your own images/labels (see ``SourceData``); ``transforms``: your own
    ``Transforms`` (weak / strong / test), e.g. for non-image data.
    """
    config = _as_config(config)
    output = Path(output)
    if resume and not (output / "state.pt").is_file():
        raise FinesslError(f"nothing to resume: {output / 'state.pt'} does not exist")
    if not resume and (output / "state.pt").is_file():
        raise FinesslError(f"{output} already holds a run; use --resume or another --output")
    dist = init_distributed(resolve_device(config.train.device).type)
    dist.barrier()  # every process has checked the run directory before anything is written
    if dist.is_main:
        output.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)

    user_backbone = backbone is not None
    if backbone is None:
        backbone = build_backbone(config.model)
    image_size = getattr(backbone, "image_size", config.model.image_size or 224)
    mean = getattr(backbone, "mean", (0.5, 0.5, 0.5))
    std = getattr(backbone, "std", (0.5, 0.5, 0.5))
    strong_views = algorithm_class(config.algorithm).strong_views(config.algorithm)
    data = build_ssl_data(config.data, image_size, mean, std, config.seed, strong_views,
                          source=source, transforms=transforms)
    if user_backbone:
        backbone = _wrap_backbone(backbone, data.test[0][0])
    model = build_model(config.model, data.num_classes, backbone=backbone, classes=data.classes)
    algorithm = build_algorithm(config.algorithm, data.num_classes, len(data.unlabeled))
    if config.algorithm.teacher:
        algorithm.teacher = _load_teacher(config.algorithm.teacher, data.classes, backbone)
    if dist.is_main:
        (output / "config.yaml").write_text(config.to_yaml())
    metadata = run_metadata(config, model, data, user_backbone)
    callbacks = list(callbacks) if callbacks is not None else [LogProgress(config.train.log_every)]
    if config.train.tensorboard and dist.is_main:
        callbacks.append(TensorBoardLog(output / "tensorboard"))
    trainer = Trainer(config, model, algorithm, data, output, callbacks=callbacks,
                      metadata=metadata, dist=dist)
    if resume:
        trainer.load_state_dict(load_state(output / "state.pt"))
        log.info("resuming %s from step %d", output, trainer.step)
    log.info("training %s: %d labeled, %d unlabeled, %d test images, %d classes, "
             "%d trainable parameters", config.algorithm.name, len(data.labeled),
             len(data.unlabeled), len(data.test), data.num_classes,
             model.num_trainable_parameters())
    return trainer.fit()


def _load_teacher(run_dir: str, classes: list[str], student: Backbone):
    from finessl.algorithms.semikd import Teacher
    from finessl.inference import load

    teacher = load(run_dir, device="cpu")
    if teacher.classes != list(classes):
        raise ConfigError(f"the teacher in {run_dir} was trained on other classes than this data")
    return Teacher(teacher.model, teacher.image_size, teacher.mean, teacher.std,
                   student.mean, student.std)


# The student of the paper's distillation: ImageNet-21k ViT-S/16 with VPT, SemiKD losses.
DISTILL_DEFAULTS = {
    "model.backbone": "timm:vit_small_patch16_224.augreg_in21k", "model.pretrained": "default",
    "model.peft": "vpt-deep", "algorithm.name": "semikd", "algorithm.margin_alpha": "10",
    "algorithm.uratio": "2", "algorithm.unlabeled_weight": "5", "algorithm.strong_views": "1",
}


def distill(teacher_dir: str | Path, output: str | Path, config: Config | None = None,
            overrides: dict[str, str] | None = None, callbacks: Sequence[Callback] | None = None,
            resume: bool = False) -> dict:
    """SemiKD: trains a student run whose teacher is the trained run in ``teacher_dir``.

    Without ``config`` the teacher's own configuration is the base, with the paper's
    student (``DISTILL_DEFAULTS``); ``overrides`` apply last.
    """
    from finessl.config import apply_overrides

    teacher_dir = Path(teacher_dir)
    if config is None:
        config = apply_overrides(load_config(teacher_dir / "config.yaml"), DISTILL_DEFAULTS)
    config = apply_overrides(config, {**(overrides or {}), "algorithm.teacher": str(teacher_dir)})
    return train(config, output, callbacks=callbacks, resume=resume)


def run_metadata(config: Config, model: FinesslModel, data: SSLData, user_backbone: bool) -> dict:
    backbone = model.backbone
    return {
        "format": "finessl-adapter-1",
        "finessl_version": __version__,
        "backbone": backbone.source.get("backbone", config.model.backbone),
        "pretrained": backbone.source.get("pretrained", str(config.model.pretrained)),
        "peft": config.model.peft,
        "user_backbone": user_backbone,
        "num_features": backbone.num_features,
        "image_size": backbone.image_size,
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "classes": data.classes,
    }


def evaluate(run_dir: str | Path, device: str = "auto") -> dict:
    """Re-evaluates a run on its test set; writes ``eval.json`` next to it."""
    from finessl.inference import load

    run = load(run_dir, device)
    cfg = run.config
    data = build_ssl_data(cfg.data, run.metadata["image_size"], run.metadata["mean"],
                          run.metadata["std"], cfg.seed, strong_views=1)
    loader = DataLoader(data.test, batch_size=cfg.train.eval_batch_size,
                        num_workers=cfg.data.num_workers)
    precision = "fp32" if run.device.type == "cpu" else "fp16"
    logits, labels = predict_logits(run.model, loader, run.device, autocast_for(precision, run.device))
    metrics = classification_metrics(logits, labels)
    write_json(Path(run_dir) / "eval.json", metrics)
    return metrics


@torch.no_grad()
def zeroshot(config: Config | str | Path | dict, device: str = "auto") -> dict:
    """CLIP zero-shot accuracy on the configured test set (no training): the lower baseline."""
    from finessl.models.zeroshot import zeroshot_logits

    config = _as_config(config)
    backbone = build_backbone(config.model).eval()
    data = build_ssl_data(config.data, backbone.image_size, backbone.mean, backbone.std,
                          config.seed, strong_views=1)
    text = backbone.text.embed(data.classes, config.model.text_template) if backbone.text else None
    if text is None:
        raise ConfigError("zero-shot classification needs an open_clip (CLIP) backbone")
    target = resolve_device(device)
    backbone.to(target)
    loader = DataLoader(data.test, batch_size=config.train.eval_batch_size,
                        num_workers=config.data.num_workers)
    logits, labels = [], []
    for images, targets in loader:
        logits.append(zeroshot_logits(backbone, images.to(target), text.to(target)).cpu())
        labels.append(torch.as_tensor(targets))
    return classification_metrics(torch.cat(logits), torch.cat(labels))
