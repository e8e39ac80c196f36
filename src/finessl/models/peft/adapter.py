"""Bottleneck adapters: ``adapter`` after the MLP, ``adaptformer`` parallel to it.

Both are ``scale * up(relu(down(x)))`` with the up-projection at zero, so training starts
from the backbone's own output. Adapter (dim 8): ``out <- out + adapter(out)`` on the MLP
output. AdaptFormer (dim 64): the block adds ``adapter(h)`` beside ``mlp(h)``, where ``h``
is the MLP's (normalised) input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from finessl.errors import ConfigError
from finessl.models.backbone_base import Backbone
from finessl.models.peft.base import PEFT_METHODS, PerBlock
from finessl.options import method_options, opt

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import ModelConfig


@method_options("model", "adapter", aliases={"adapter_dim": "dim", "adapter_scale": "scale"})
@dataclass
class AdapterOptions:
    """Bottleneck adapter after the MLP."""

    dim: int = opt(8, "bottleneck width", ge=1, le=65536)
    scale: float = opt(0.1, "output scale")


@method_options("model", "adaptformer", aliases={"adaptformer_dim": "dim",
                                                 "adaptformer_scale": "scale"})
@dataclass
class AdaptFormerOptions:
    """AdaptFormer: a bottleneck parallel to the MLP."""

    dim: int = opt(64, "bottleneck width", ge=1, le=65536)
    scale: float = opt(0.1, "output scale")


class Bottleneck(nn.Module):
    def __init__(self, width: int, dim: int, scale: float) -> None:
        super().__init__()
        if dim < 1:
            raise ConfigError("adapter bottleneck dimension must be at least 1")
        self.down = nn.Linear(width, dim)
        self.up = nn.Linear(dim, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(torch.relu(self.down(x)))


@PEFT_METHODS.register("adapter")
class Adapter(PerBlock):
    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        options, width = config.options("adapter"), getattr(backbone, "width", 0)
        super().__init__(backbone, config, lambda: Bottleneck(width, options.dim, options.scale))

    def mlp_out(self, index: int, out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        module = self.module_for(index)
        return out if module is None else out + module(out)


@PEFT_METHODS.register("adaptformer")
class AdaptFormer(PerBlock):
    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        options, width = config.options("adaptformer"), getattr(backbone, "width", 0)
        super().__init__(backbone, config, lambda: Bottleneck(width, options.dim, options.scale))

    def mlp_parallel(self, index: int, h: torch.Tensor) -> torch.Tensor:
        module = self.module_for(index)
        return torch.zeros_like(h) if module is None else module(h)
