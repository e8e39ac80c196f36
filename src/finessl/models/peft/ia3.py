"""(IA)^3 (Liu et al., NeurIPS 2022): learned vectors that rescale keys, values and the
MLP's hidden activations, ``k <- l_k * k``, ``v <- l_v * v``, ``a <- l_ff * a``.

Three vectors per tuned block (2 x width + MLP width numbers), all starting at 1, so
training starts from the backbone's own output. The fewest trainable parameters of the
ViT methods after BitFit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from finessl.models.backbone_base import Backbone
from finessl.models.peft.base import PEFT_METHODS, PerBlock
from finessl.options import method_options, opt

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import ModelConfig


@method_options("model", "ia3")
@dataclass
class IA3Options:
    """(IA)^3 rescaling vectors."""

    feedforward: bool = opt(True, "also rescale the MLP's hidden activations (l_ff)")


class Rescaling(nn.Module):
    """The vectors of one block: keys, values, MLP activations."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.key = nn.Parameter(torch.ones(width))
        self.value = nn.Parameter(torch.ones(width))
        self.feedforward = nn.Parameter(torch.ones(hidden)) if hidden else None


@PEFT_METHODS.register("ia3")
class IA3(PerBlock):
    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        hidden = 0
        if config.options("ia3").feedforward and getattr(backbone, "is_vit", False):
            block = backbone.blocks[0]
            parts = backbone.parts(block)
            with torch.no_grad():
                hidden = parts.mlp_up(torch.zeros(1, 1, backbone.width)).shape[-1]
        width = getattr(backbone, "width", 0)
        super().__init__(backbone, config, lambda: Rescaling(width, hidden))

    def qkv(self, index: int, qkv: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        module = self.module_for(index)
        if module is None:
            return qkv
        q, k, v = qkv.chunk(3, dim=-1)
        return torch.cat([q, k * module.key.to(k.dtype), v * module.value.to(v.dtype)], dim=-1)

    def mlp_hidden(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        module = self.module_for(index)
        if module is None or module.feedforward is None:
            return hidden
        return hidden * module.feedforward.to(hidden.dtype)
