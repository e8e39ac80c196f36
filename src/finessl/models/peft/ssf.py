"""SSF (scale and shift features): ``y * gamma + beta`` at fixed points of the network.

On ViTs: after qkv, after the attention output projection, on the MLP input and on the
MLP output of every tuned block. On CNNs: after every batch-norm layer. gamma starts at
N(1, 0.02), beta at N(0, 0.02), as in the SSF paper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from finessl.models.backbone_base import Backbone
from finessl.models.peft.base import PEFT_METHODS, Peft, PerBlock

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import ModelConfig


class ScaleShift(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.empty(channels).normal_(1.0, 0.02))
        self.shift = nn.Parameter(torch.empty(channels).normal_(0.0, 0.02))

    def forward(self, x: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[channel_dim] = -1
        return x * self.scale.view(shape).to(x.dtype) + self.shift.view(shape).to(x.dtype)


class BlockScaleShift(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.qkv = ScaleShift(3 * width)
        self.attn_out = ScaleShift(width)
        self.mlp_in = ScaleShift(width)
        self.mlp_out = ScaleShift(width)


class ViTSSF(PerBlock):
    name = "ssf"

    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        super().__init__(backbone, config, lambda: BlockScaleShift(backbone.width))

    def _scale_shift(self, point: str, index: int, x: torch.Tensor) -> torch.Tensor:
        module = self.module_for(index)
        return x if module is None else getattr(module, point)(x)

    def qkv(self, index, qkv, h):
        return self._scale_shift("qkv", index, qkv)

    def attn_out(self, index, out, h):
        return self._scale_shift("attn_out", index, out)

    def mlp_in(self, index, h, x):
        return self._scale_shift("mlp_in", index, h)

    def mlp_out(self, index, out, h):
        return self._scale_shift("mlp_out", index, out)


class CNNSSF(Peft):
    """Scale/shift after each batch-norm layer, through forward hooks."""

    name = "ssf"

    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        super().__init__()
        norms = [(n, m) for n, m in backbone.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            from finessl.errors import ConfigError

            raise ConfigError("model.peft 'ssf' needs a ViT or a CNN with batch-norm layers")
        self.layers = nn.ModuleDict({n.replace(".", "__"): ScaleShift(m.num_features)
                                     for n, m in norms})
        self._norms = norms

    def attach(self, backbone: Backbone) -> None:
        for name, norm in self._norms:
            layer = self.layers[name.replace(".", "__")]
            norm.register_forward_hook(lambda _m, _i, out, layer=layer: layer(out, channel_dim=1))
        super().attach(backbone)


@PEFT_METHODS.register("ssf")
def ssf(config: ModelConfig, backbone: Backbone) -> Peft:
    return ViTSSF(config, backbone) if backbone.is_vit else CNNSSF(config, backbone)
