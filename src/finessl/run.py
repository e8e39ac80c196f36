"""High-level API: train a run, load it back, evaluate it, predict with it."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from finessl import __version__
from finessl.algorithms import algorithm_class, build_algorithm
from finessl.config import Config, load_config, load_preset
from finessl.data.augment import build_transforms
from finessl.data.datasets import SourceData, list_images, load_image
from finessl.data.ssl_data import SSLData, build_ssl_data
from finessl.engine.checkpoint import load_adapter, load_state, write_json
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


# --------------------------------------------------------------------------- using a run


@dataclass
class LoadedRun:
    """A trained model with what it needs to read new images."""

    config: Config
    model: FinesslModel
    classes: list[str]
    metadata: dict
    device: torch.device

    @property
    def transform(self):
        meta = self.metadata
        return build_transforms(meta["image_size"], meta["mean"], meta["std"]).test

    @torch.no_grad()
    def predict(self, images: Sequence[str | Path], batch_size: int = 64, top_k: int = 1):
        """Returns one dict per image: path, label, confidence and the top-k classes."""
        dataset = _ImageFiles(list(images), self.transform)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=0)
        rows = []
        self.model.eval()
        for tensors, paths in loader:
            probs = self.model(tensors.to(self.device)).float().softmax(-1).cpu()
            values, indices = probs.topk(min(top_k, probs.shape[1]), dim=-1)
            for path, vals, idxs in zip(paths, values.tolist(), indices.tolist()):
                rows.append({
                    "path": path, "label": self.classes[idxs[0]], "confidence": vals[0],
                    "top": [(self.classes[i], v) for i, v in zip(idxs, vals)],
                })
        return rows


class _ImageFiles(Dataset):
    def __init__(self, paths: list[str | Path], transform) -> None:
        self.paths, self.transform = [str(p) for p in paths], transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(load_image(self.paths[index])), self.paths[index]


def load(run_dir: str | Path, device: str = "auto", backbone: nn.Module | None = None) -> LoadedRun:
    """Rebuilds a trained model from a run directory (base model + adapter weights)."""
    run_dir = Path(run_dir)
    adapter = run_dir / "adapter.safetensors"
    if not adapter.is_file():
        raise FinesslError(f"{run_dir} is not a finished run: {adapter.name} is missing")
    config = load_config(run_dir / "config.yaml")
    state, meta = load_adapter(adapter)
    if meta.get("user_backbone") and backbone is None:
        raise FinesslError("this run used a user-supplied backbone; pass it to load(backbone=...)")
    if backbone is None:
        backbone = build_backbone(config.model)
    elif not isinstance(backbone, Backbone):
        backbone = ModuleBackbone(backbone, meta["num_features"], meta["image_size"],
                                  meta["mean"], meta["std"])
    # The heads come from the adapter file, so there is no need to embed class names again.
    model_config = dataclasses.replace(config.model, head_init="random")
    model = build_model(model_config, len(meta["classes"]), backbone=backbone)
    missing = set(model.trainable_state_dict()) - set(state)
    if missing:
        raise FinesslError(f"{adapter} does not match its config: missing {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)
    target = resolve_device(device)
    model.to(target).eval()
    return LoadedRun(config, model, list(meta["classes"]), meta, target)


def evaluate(run_dir: str | Path, device: str = "auto") -> dict:
    """Re-evaluates a run on its test set; writes ``eval.json`` next to it."""
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


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to the images inside; missing paths are errors."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += list_images(path)
        elif path.is_file():
            found.append(path)
        else:
            raise FinesslError(f"{str(path)!r} does not exist")
    if not found:
        raise FinesslError("no images found in the given paths")
    return found


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
