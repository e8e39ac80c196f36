"""A finished run, read from its folder and rebuilt: the one place a trained model is
made again (prediction, evaluation, estimates, the audit, warm starts, SemiKD's teacher).

It sits below the builder, the audit and inference, which all need it; the model itself is
built by ``finessl.models.build_model`` from the run's ``config.yaml`` and its weights are
checked and loaded by ``FinesslModel.load_trainable``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finessl.config import Config
from finessl.device import resolve_device
from finessl.errors import AdapterMismatch, FinesslError
from finessl.hub import local_run
from finessl.models import FinesslModel, build_backbone, build_model
from finessl.models.backbone_base import Backbone, ModuleBackbone
from finessl.rundir import RunDir


@dataclass
class Trained:
    """A finished run as read from its folder: configuration, trained weights, metadata."""

    run: RunDir
    config: Config
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]


def read_trained(run_dir: str | Path) -> Trained:
    """A run folder's (or ``hf-hub:USER/NAME``'s, downloaded first) config and adapter."""
    run = RunDir(local_run(run_dir))
    config = run.read_config()
    state, meta = run.load_adapter()
    return Trained(run, config, state, meta)


@dataclass
class Rebuilt:
    """A finished run's model, rebuilt and loaded, with what reading images needs."""

    model: FinesslModel
    trained: Trained
    device: torch.device

    @property
    def classes(self) -> list[str]:
        return list(self.trained.meta["classes"])

    @property
    def image_size(self) -> int:
        return self.trained.meta["image_size"]

    @property
    def mean(self) -> list[float]:
        return self.trained.meta["mean"]

    @property
    def std(self) -> list[float]:
        return self.trained.meta["std"]


def rebuild(run_dir: str | Path, device: str = "auto", backbone: nn.Module | None = None) -> Rebuilt:
    """A trained model from a run directory (base model + adapter weights) or a Hub run.

    The config, the adapter's metadata and the rebuilt frozen model must agree; a run whose
    files were damaged or edited is an error naming what differs. ``backbone``: the module
    of a run trained with a user-supplied backbone."""
    trained = read_trained(run_dir)
    run, config, meta = trained.run, trained.config, trained.meta
    if meta.get("user_backbone") and backbone is None:
        raise FinesslError("this run used a user-supplied backbone; pass it to load(backbone=...)")
    if backbone is None:
        backbone = build_backbone(config.model)
    elif not isinstance(backbone, Backbone):
        backbone = ModuleBackbone(backbone, meta["num_features"], meta["image_size"],
                                  meta["mean"], meta["std"])
    if backbone.num_features != meta["num_features"]:
        raise run.damaged(f"the backbone gives {backbone.num_features} features, the adapter "
                          f"expects {meta['num_features']}")
    # The heads come from the adapter file, so there is no need to embed class names again.
    model_config = dataclasses.replace(config.model, head_init="random")
    try:
        model = build_model(model_config, len(meta["classes"]), backbone=backbone)
    except FinesslError as error:
        raise run.damaged(f"config.yaml does not build its model ({error})") from None
    try:
        model.load_trainable(trained.state, meta)
    except AdapterMismatch as error:
        raise run.damaged(f"adapter.safetensors and config.yaml disagree: {error} (another run's "
                          "adapter, or an edited config)") from None
    target = resolve_device(device)
    model.to(target).eval()
    return Rebuilt(model, trained, target)
