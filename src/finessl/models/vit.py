"""One Vision Transformer forward with named hook points, shared by every ViT family.

open_clip and timm ViTs differ in parameter names, not in computation. A family adapter
says how to embed patches, where the blocks are and how to pool; the loop here runs the
blocks with ``scaled_dot_product_attention`` and lets PEFT modules act at named points
(``before_block`` for now: VPT inserts its prompts there). The frozen weights keep their
original names, so checkpoints of the family load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from finessl.errors import ConfigError
from finessl.models.backbone_base import Backbone


def fused_self_attention(
    x: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    out_proj: nn.Module,
    num_heads: int,
) -> torch.Tensor:
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""
    batch, length, width = x.shape
    qkv = F.linear(x, qkv_weight, qkv_bias)
    q, k, v = qkv.view(batch, length, 3, num_heads, width // num_heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    return out_proj(out.transpose(1, 2).reshape(batch, length, width))


class ViTBackbone(Backbone):
    """Base of ViT backbones: subclasses provide ``embed``, ``blocks``, ``run_block``, ``pool``."""

    is_vit = True
    num_layers: int
    width: int
    patch_size: tuple[int, int]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, x: torch.Tensor, seq_len: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images)
        seq_len = x.shape[1]
        hooks = [m for m in self.peft.values() if hasattr(m, "before_block")]
        for index, block in enumerate(self.blocks):
            for hook in hooks:
                x = hook.before_block(index, x, seq_len)
            x = self.run_block(block, x)
        return self.pool(x, seq_len)


class OpenClipViT(ViTBackbone):
    """An open_clip ``VisionTransformer``; feature = ``ln_post`` of the CLS token (pre-projection)."""

    def __init__(self, visual: nn.Module, mean, std, source: dict[str, str]) -> None:
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None:
            raise ConfigError("open_clip ViTs with attentional pooling are not supported yet")
        if visual.pool_type not in ("tok", "avg"):
            raise ConfigError(f"open_clip ViT pool type {visual.pool_type!r} is not supported")
        first = visual.transformer.resblocks[0]
        if not isinstance(getattr(first, "attn", None), nn.MultiheadAttention):
            raise ConfigError("this open_clip ViT uses a custom attention block; not supported yet")
        self.visual = visual
        self.num_layers = len(visual.transformer.resblocks)
        self.width = visual.conv1.out_channels
        self.patch_size = tuple(visual.patch_size)
        self.num_features = self.width
        self.image_size = int(visual.image_size[0])
        self.mean, self.std = tuple(mean), tuple(std)
        self.source = source
        self.unused_prefixes = ("visual.proj",)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual._embeds(images)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        attn = block.attn
        h = fused_self_attention(
            block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, attn.num_heads
        )
        x = x + block.ls_1(h)
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def pool(self, x: torch.Tensor, seq_len: int) -> torch.Tensor:
        visual = self.visual
        if visual.pool_type == "tok":
            return visual.ln_post(x[:, 0])
        patches = x[:, 1:seq_len]  # average patch tokens only, never prompts
        if visual.final_ln_after_pool:
            return visual.ln_post(patches.mean(dim=1))
        return visual.ln_post(patches).mean(dim=1)
