"""Methods that only choose which existing weights train: linear, BitFit, full."""

from __future__ import annotations

from finessl.config import ModelConfig
from finessl.models.backbone_base import Backbone
from finessl.models.peft.base import PEFT_METHODS, Peft


@PEFT_METHODS.register("linear")
class LinearProbe(Peft):
    """Backbone frozen; only the heads train."""

    name = "linear"

    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        super().__init__()


@PEFT_METHODS.register("bitfit")
class BitFit(Peft):
    """Every bias of the backbone trains (linear, conv and normalisation biases)."""

    name = "bitfit"

    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        super().__init__()

    def attach(self, backbone: Backbone) -> None:
        for name, param in backbone.feature_parameters():
            if name.endswith("bias"):
                param.requires_grad_(True)
        super().attach(backbone)


@PEFT_METHODS.register("full")
class FullFineTuning(Peft):
    """All feature weights train, batch-norm statistics included."""

    name = "full"

    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        super().__init__()

    def attach(self, backbone: Backbone) -> None:
        for _, param in backbone.feature_parameters():
            param.requires_grad_(True)
        backbone.trains_norm_statistics = True
        super().attach(backbone)
