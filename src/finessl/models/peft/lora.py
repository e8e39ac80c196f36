"""LoRA on the query and value projections: ``q += s * B_q A_q h``, ``v += s * B_v A_v h``.

A starts kaiming-uniform, B at zero (so training starts from the backbone's own output);
``s = alpha / rank`` (``model.lora``; the reference: alpha 1, so 1/r).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from finessl.models.backbone_base import Backbone
from finessl.models.peft.base import PEFT_METHODS, PerBlock
from finessl.options import method_options, opt

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import ModelConfig


@method_options("model", "lora", aliases={"lora_rank": "rank", "lora_alpha": "alpha"})
@dataclass
class LoraOptions:
    """LoRA on the query and value projections."""

    rank: int = opt(8, "rank r (the paper: 8; 16 for CIFAR-100)", ge=1, le=65536)
    alpha: float = opt(1.0, "the update is scaled by alpha / rank", gt=0)


class LowRankPair(nn.Module):
    """Low-rank updates for q and v of one block."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.empty(2, rank, width))
        self.b = nn.Parameter(torch.zeros(2, width, rank))
        for i in range(2):
            nn.init.kaiming_uniform_(self.a[i], a=math.sqrt(5))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """[N, L, width] -> [2, N, L, width]: the q and v updates."""
        low = torch.einsum("nlw,krw->knlr", h, self.a.to(h.dtype))
        return torch.einsum("knlr,kwr->knlw", low, self.b.to(h.dtype))


@PEFT_METHODS.register("lora")
class LoRA(PerBlock):
    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        options = config.options("lora")
        width = getattr(backbone, "width", 0)
        super().__init__(backbone, config, lambda: LowRankPair(width, options.rank))
        self.scale = options.alpha / options.rank
        self.width = width

    def qkv(self, index: int, qkv: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        module = self.module_for(index)
        if module is None:
            return qkv
        dq, dv = module(h) * self.scale
        zeros = torch.zeros_like(dq)
        return qkv + torch.cat([dq, zeros, dv], dim=-1)
