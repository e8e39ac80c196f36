"""Visual Prompt Tuning: learned tokens appended after the patch tokens.

* ``vpt-deep``: before every tuned block, the previous prompts are dropped and the block's
  own are appended (``x = cat(x[:, :seq_len], P_i)``);
* ``vpt-shallow``: prompts enter once, before the first block, and flow through;
* ``vpt-last``: prompts only before the last block.

Prompts start uniform(-v, v), v = sqrt(6 / (3 * patch_h * patch_w + width)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from finessl.models.backbone_base import Backbone
from finessl.models.peft.base import PEFT_METHODS, Peft, require_vit, tuned_blocks
from finessl.options import method_options, opt

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import ModelConfig


@method_options("model", "vpt", aliases={"vpt_tokens": "tokens"},
                used_by=("vpt-deep", "vpt-shallow", "vpt-last"))
@dataclass
class VptOptions:
    """Visual Prompt Tuning (vpt-deep, vpt-shallow, vpt-last)."""

    tokens: int = opt(50, "prompt tokens per layer", ge=1, le=4096)


class VisualPrompts(Peft):
    def __init__(self, config: ModelConfig, backbone: Backbone, block_ids: list[int]) -> None:
        super().__init__()
        require_vit(backbone, self.name)
        tokens = config.options("vpt").tokens
        patch_h, patch_w = backbone.patch_size
        bound = math.sqrt(6.0 / (3 * patch_h * patch_w + backbone.width))
        prompts = torch.empty(len(block_ids), tokens, backbone.width)
        self.prompts = nn.Parameter(prompts.uniform_(-bound, bound))
        self.slot = {b: i for i, b in enumerate(block_ids)}

    def before_block(self, index: int, tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
        slot = self.slot.get(index)
        if slot is None:
            return tokens
        prompt = self.prompts[slot].to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return torch.cat([tokens[:, :seq_len], prompt], dim=1)


@PEFT_METHODS.register("vpt-deep")
class VPTDeep(VisualPrompts):
    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        require_vit(backbone, self.name)
        super().__init__(config, backbone, tuned_blocks(backbone, config))


@PEFT_METHODS.register("vpt-shallow")
class VPTShallow(VisualPrompts):
    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        require_vit(backbone, self.name)
        super().__init__(config, backbone, [0])


@PEFT_METHODS.register("vpt-last")
class VPTLast(VisualPrompts):
    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        require_vit(backbone, self.name)
        super().__init__(config, backbone, [backbone.num_layers - 1])
