"""Visual Prompt Tuning, deep variant: learned tokens replace the previous block's prompts."""

from __future__ import annotations

import math

import torch
from torch import nn

from finessl.config import ModelConfig
from finessl.errors import ConfigError
from finessl.models.backbone_base import Backbone
from finessl.models.peft.base import PEFT_METHODS, Peft


@PEFT_METHODS.register("vpt-deep")
class VPTDeep(Peft):
    """Before block i: ``x = cat(x[:, :seq_len], P_i)`` with ``P_i`` of ``vpt_tokens`` tokens.

    Prompts start uniform(-v, v), v = sqrt(6 / (3 * patch_h * patch_w + width)).
    """

    name = "vpt-deep"

    def __init__(self, config: ModelConfig, backbone: Backbone) -> None:
        super().__init__()
        if not backbone.is_vit:
            raise ConfigError("model.peft 'vpt-deep' needs a ViT backbone; try 'bitfit' or 'full'")
        if config.vpt_tokens < 1:
            raise ConfigError("model.vpt_tokens must be at least 1")
        patch_h, patch_w = backbone.patch_size
        bound = math.sqrt(6.0 / (3 * patch_h * patch_w + backbone.width))
        prompts = torch.empty(backbone.num_layers, config.vpt_tokens, backbone.width)
        self.prompts = nn.Parameter(prompts.uniform_(-bound, bound))

    def before_block(self, index: int, tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
        prompt = self.prompts[index].to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return torch.cat([tokens[:, :seq_len], prompt], dim=1)
