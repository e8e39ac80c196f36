"""Methods that only choose which existing weights train: linear, BitFit, BN-tuning, full."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from finessl.errors import ConfigError
from finessl.models.backbone_base import Backbone
from finessl.models.peft.base import PEFT_METHODS, Peft, tuned_blocks

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import ModelConfig


def _in_tuned_blocks(backbone: Backbone, config: ModelConfig):
    """Parameter-name filter for ``partial``: only names inside the last k blocks."""
    if config.partial is None:
        return lambda name: True
    if not backbone.is_vit:
        raise ConfigError("model.partial applies to ViT backbones only")
    blocks = backbone.blocks
    tuned = {id(p) for i in tuned_blocks(backbone, config) for p in blocks[i].parameters()}
    params = dict(backbone.named_parameters())
    return lambda name: id(params[name]) in tuned


@PEFT_METHODS.register("linear")
class LinearProbe(Peft):
    """Backbone frozen; only the heads train."""


    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        super().__init__()


@PEFT_METHODS.register("bitfit")
class BitFit(Peft):
    """Every bias of the backbone trains (linear, conv and normalisation biases)."""


    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        super().__init__()
        self.keep = _in_tuned_blocks(backbone, config)

    def attach(self, backbone: Backbone) -> None:
        for name, param in backbone.feature_parameters():
            if name.endswith("bias") and self.keep(name):
                param.requires_grad_(True)
        super().attach(backbone)


@PEFT_METHODS.register("bn-tuning")
class BatchNormTuning(Peft):
    """Batch-norm scales and shifts train, and their statistics follow the new data (CNNs)."""


    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        super().__init__()
        self.norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.norms:
            raise ConfigError("model.peft 'bn-tuning' needs a backbone with batch-norm layers")

    def attach(self, backbone: Backbone) -> None:
        for norm in self.norms:
            norm.requires_grad_(True)
        backbone.trains_norm_statistics = True
        super().attach(backbone)


@PEFT_METHODS.register("full")
class FullFineTuning(Peft):
    """All feature weights train (of the last k blocks with ``partial``), BN statistics too."""


    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        super().__init__()
        self.keep = _in_tuned_blocks(backbone, config)

    def attach(self, backbone: Backbone) -> None:
        for name, param in backbone.feature_parameters():
            if self.keep(name):
                param.requires_grad_(True)
        backbone.trains_norm_statistics = True
        super().attach(backbone)
