"""Every construction of a model or a run: backbone -> data -> model -> algorithm.

``train``, ``distill``, ``bench`` and ``suggest`` build everything with ``build_run``;
``evaluate`` and ``zeroshot`` only the backbone and the test set (``build_test_set``).
What an algorithm needs (strong views, collaborators such as SemiKD's teacher) it
declares in ``needs``; the builder supplies it. A finished run's model is made again by
``finessl.trained.rebuild`` (below the audit and inference, which need it too); the
builder uses it for warm starts and hands it to the collaborators. A user's backbone,
data and transforms and the process group are passed in, never patched on afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from finessl import __version__
from finessl.algorithms import Algorithm, Collaboration, algorithm_class, build_algorithm
from finessl.audit.pool_filter import PoolFilter, judge_pool
from finessl.config import (
    Config,
    apply_overrides,
    is_resolved,
    is_validated,
    load_config,
    load_preset,
    mark_resolved,
    validate_config,
)
from finessl.data.augment import Transforms, build_transforms
from finessl.data.datasets import DATASETS, SourceData, load_source
from finessl.data.ssl_data import LabeledView, SSLData, build_ssl_data, cap_indices, check_readable
from finessl.distributed import DistEnv
from finessl.errors import AdapterMismatch, ConfigError, DataError
from finessl.models import FinesslModel, build_backbone, build_model
from finessl.models.backbone_base import Backbone, ModuleBackbone
from finessl.models.backbones import check_backbone_name
from finessl.models.peft.base import PEFT_METHODS, peft_names
from finessl.trained import read_trained, rebuild


def as_config(config: Config | str | Path | dict, overrides: dict[str, str] | None = None) -> Config:
    """The one place a configuration is resolved: a Config, a preset name, a YAML path or a
    nested dict, with ``overrides``, validated and its names checked. A Config resolved
    before and unchanged since is returned as it is (``finessl train`` resolves it once)."""
    if isinstance(config, dict):
        from finessl.config import config_from_dict

        config = config_from_dict(config, overrides)
    elif not isinstance(config, Config):
        path = Path(config)
        config = load_config(path, overrides) if path.suffix in (".yaml", ".yml") \
            else load_preset(str(config), overrides)
    elif overrides:
        config = apply_overrides(config, overrides)
    if is_resolved(config):
        return config
    if not is_validated(config):
        validate_config(config)
    check_names(config)
    return mark_resolved(config)


def check_names(config: Config) -> None:
    """Registry names (algorithm, dataset, PEFT methods, backbone), before anything heavy is
    built: every command that takes a configuration checks them the same way."""
    algorithm_class(config.algorithm)
    DATASETS.get(config.data.name)
    for name in peft_names(config.model):
        PEFT_METHODS.get(name)
    check_backbone_name(config.model.backbone)


def wrap_backbone(backbone: nn.Module, sample: torch.Tensor | None) -> Backbone:
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


@dataclass
class RunPieces:
    """Everything a training run is made of."""

    config: Config
    data: SSLData
    model: FinesslModel
    algorithm: Algorithm
    metadata: dict[str, Any]
    pool_filter: PoolFilter | None = None  # what algorithm.ood dropped from the pool


def build_run(config: Config, *, backbone: nn.Module | None = None, source: SourceData | None = None,
              transforms: Transforms | None = None, dist: DistEnv | None = None,
              collaborators: dict[str, Any] | None = None, check_files: bool = True,
              pool_filter: PoolFilter | None = None) -> RunPieces:
    """Builds the pieces of a run. ``backbone``: any module mapping a batch to ``[N, D]``
    features (default: ``config.model``); ``source`` / ``transforms``: your own data and
    augmentations; ``collaborators``: ready-made objects for what the algorithm's ``needs``
    declares (else made here); ``pool_filter``: the images ``algorithm.ood`` dropped before
    (a resumed run), else judged here."""
    user_backbone = backbone is not None
    built = backbone if user_backbone else build_backbone(config.model)
    image_size = getattr(built, "image_size", config.model.image_size or 224)
    mean = getattr(built, "mean", (0.5, 0.5, 0.5))
    std = getattr(built, "std", (0.5, 0.5, 0.5))
    needs = algorithm_class(config.algorithm).needs(config.algorithm)
    data = build_ssl_data(config.data, image_size, mean, std, config.seed, needs.strong_views,
                          source=source, transforms=transforms, check_files=check_files)
    if user_backbone:
        built = wrap_backbone(built, data.test[0][0])
    # Collaborators before the model: a teacher rebuilt here draws from the global RNG
    # before the student's heads are initialised, as it always has.
    given = collaborators or {}
    made = Collaboration(config.algorithm, data.classes, built, rebuild)
    context: dict[str, Any] = {name: given[name] if name in given else make(made)
                               for name, make in needs.collaborators.items()}
    model = build_model(config.model, data.num_classes, backbone=built, classes=data.classes)
    if config.model.init_from:
        warm_start(model, config.model.init_from, data.classes)
    dist = dist or DistEnv()
    if config.algorithm.ood != "none" and needs.uses_unlabeled:
        pool_filter = pool_filter or _judge_pool(config, model, data, dist)
        data = data.without_unlabeled(pool_filter.excluded)
    context.update(total_steps=config.train.steps * config.train.accumulate, dist=dist)
    algorithm = build_algorithm(config.algorithm, data.num_classes, len(data.unlabeled), **context)
    return RunPieces(config, data, model, algorithm, run_metadata(config, model, data, user_backbone),
                     pool_filter)


def _judge_pool(config: Config, model: FinesslModel, data: SSLData, dist: DistEnv) -> PoolFilter:
    """``algorithm.ood`` with the model as it starts; every process keeps rank 0's verdict."""
    from finessl.device import resolve_device

    device = resolve_device(config.train.device, dist.local_rank)
    model.to(device).eval()
    verdict = judge_pool(model.features, data, config.algorithm.ood, device,
                         config.train.eval_batch_size, config.seed)
    model.to("cpu")
    excluded = dist.broadcast_indices(verdict.excluded, device)
    scores = verdict.scores if dist.is_main else np.zeros(len(excluded))  # only rank 0 writes them
    return PoolFilter(excluded, scores, verdict.share)


def warm_start(model: FinesslModel, run_dir: str, classes: list[str]) -> None:
    """Starts from an earlier run's trained weights (PEFT and both heads)."""
    trained = read_trained(run_dir)
    if list(trained.meta["classes"]) != list(classes):
        raise ConfigError(f"model.init_from {run_dir}: that run has other classes than this data")
    try:
        model.load_trainable(trained.state, trained.meta)
    except AdapterMismatch as error:
        raise ConfigError(f"model.init_from {run_dir}: {error}; a warm start needs the same "
                          "backbone, weights, model.init_seed and PEFT method") from None


def run_metadata(config: Config, model: FinesslModel, data: SSLData, user_backbone: bool) -> dict:
    """What ``adapter.safetensors`` records about the model it belongs to."""
    backbone = model.backbone
    return {
        "format": "finessl-adapter-1",
        "finessl_version": __version__,
        "backbone": backbone.source.get("backbone", config.model.backbone),
        "pretrained": backbone.source.get("pretrained", str(config.model.pretrained)),
        "peft": config.model.peft,
        "activation": backbone.source.get("activation", "n/a"),
        "init_seed": config.model.init_seed,
        "frozen_fingerprint": model.frozen_fingerprint(),
        "user_backbone": user_backbone,
        "num_features": backbone.num_features,
        "image_size": backbone.image_size,
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "classes": data.classes,
    }


def build_test_set(config: Config, backbone: Backbone) -> tuple[list[str], Dataset]:
    """The class names and the (test-transformed) test set only: no split, no unlabeled pool."""
    source = load_source(config.data, config.seed)
    transforms = build_transforms(backbone.image_size, backbone.mean, backbone.std,
                                  config.data.strong_augment)
    indices = cap_indices(np.arange(len(source.test)), config.data.max_test, config.seed + 1)
    if len(indices) == 0:
        raise DataError("this configuration has no test set to evaluate on (give a test folder "
                        "or data.test_csv); without one, 'finessl estimate --run DIR' estimates "
                        "the accuracy from unlabeled images")
    check_readable(source.test, indices, "test")
    return list(source.classes), LabeledView(source.test, indices, transforms.test)

