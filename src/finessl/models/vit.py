"""One Vision Transformer forward with named hook points, shared by every ViT family.

open_clip and timm ViTs differ in parameter names, not in computation. A family adapter
says how to embed patches, where a block's pieces are and how to pool; the loop here
runs every block with ``scaled_dot_product_attention`` and lets PEFT modules act at named
points. The frozen weights keep their original names, so the family's checkpoints load
unchanged. Hook points, in the order a block reaches them::

    before_block(i, tokens, seq_len) -> tokens      # VPT: replace / append prompt tokens
    qkv(i, qkv, h) -> qkv                           # LoRA (q, v), SSF
    attn_out(i, out, h) -> out                      # SSF
    mlp_in(i, h, x) -> h                            # SSF
    mlp_hidden(i, hidden) -> hidden                 # (IA)^3: the MLP's activations
    mlp_out(i, out, h) -> out                       # Adapter (sequential), SSF
    mlp_parallel(i, h) -> extra                     # AdaptFormer: added beside the MLP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from finessl.errors import ConfigError
from finessl.models.backbone_base import Backbone

HOOK_POINTS = ("before_block", "qkv", "attn_out", "mlp_in", "mlp_hidden", "mlp_out", "mlp_parallel")


@dataclass
class BlockParts:
    """The pieces of one pre-norm transformer block, whatever the family calls them."""

    norm1: Callable
    qkv: nn.Linear | Callable  # h -> [N, L, 3 * width]
    num_heads: int
    q_norm: Callable
    k_norm: Callable
    attn_post: Callable  # norm applied to the attention output before proj (timm); identity
    proj: Callable
    ls1: Callable
    norm2: Callable
    mlp_up: Callable  # h -> hidden activations (fc1, act)
    mlp_down: Callable  # hidden -> out (norm, fc2)
    ls2: Callable


def attention(qkv: torch.Tensor, parts: BlockParts) -> torch.Tensor:
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""
    batch, length, triple = qkv.shape
    width = triple // 3
    heads = parts.num_heads
    q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(parts.q_norm(q), parts.k_norm(k), v)
    return out.transpose(1, 2).reshape(batch, length, width)


class ViTBackbone(Backbone):
    """Base of ViT backbones: subclasses provide ``embed``, ``blocks``, ``parts``, ``pool``."""

    is_vit = True
    num_layers: int
    width: int
    patch_size: tuple[int, int]
    grad_checkpointing = False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Per transformer block: its activations are recomputed in the backward pass."""
        self.grad_checkpointing = enabled

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def parts(self, block: nn.Module) -> BlockParts:
        raise NotImplementedError

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feature from the final tokens (prompt tokens already removed)."""
        raise NotImplementedError

    def _hooks(self) -> dict[str, list]:
        return {p: [getattr(m, p) for m in self.peft.values() if hasattr(m, p)] for p in HOOK_POINTS}

    def run_block(self, index: int, block: nn.Module, x: torch.Tensor, hooks) -> torch.Tensor:
        parts = self.parts(block)
        h = parts.norm1(x)
        qkv = parts.qkv(h)
        for hook in hooks["qkv"]:
            qkv = hook(index, qkv, h)
        out = parts.proj(parts.attn_post(attention(qkv, parts)))
        for hook in hooks["attn_out"]:
            out = hook(index, out, h)
        x = x + parts.ls1(out)
        h = parts.norm2(x)
        for hook in hooks["mlp_in"]:
            h = hook(index, h, x)
        hidden = parts.mlp_up(h)
        for hook in hooks["mlp_hidden"]:
            hidden = hook(index, hidden)
        out = parts.mlp_down(hidden)
        for hook in hooks["mlp_out"]:
            out = hook(index, out, h)
        for hook in hooks["mlp_parallel"]:
            out = out + hook(index, h)
        return x + parts.ls2(out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hooks = self._hooks()
        x = self.embed(images)
        seq_len = x.shape[1]
        checkpointed = self.grad_checkpointing and torch.is_grad_enabled()
        for index, block in enumerate(self.blocks):
            for hook in hooks["before_block"]:
                x = hook(index, x, seq_len)
            if checkpointed:
                x = checkpoint(self.run_block, index, block, x, hooks, use_reentrant=False)
            else:
                x = self.run_block(index, block, x, hooks)
        return self.pool(x[:, :seq_len])


def _identity(x):
    return x


class OpenClipViT(ViTBackbone):
    """An open_clip ``VisionTransformer``; feature = pooled, ``ln_post``-ed, pre-projection."""

    def __init__(self, visual: nn.Module, mean, std, source: dict[str, str]) -> None:
        super().__init__()
        first = visual.transformer.resblocks[0]
        if not isinstance(getattr(first, "attn", None), nn.MultiheadAttention):
            raise ConfigError("this open_clip ViT uses a custom attention block; not supported yet")
        self.visual = visual
        self.num_layers = len(visual.transformer.resblocks)
        self.width = visual.conv1.out_channels
        self.patch_size = tuple(visual.patch_size)
        self.num_features = self.width if visual.attn_pool is None else visual.output_dim
        self.image_size = int(visual.image_size[0])
        self.mean, self.std = tuple(mean), tuple(std)
        self.source = source
        self.unused_prefixes = ("visual.proj",)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual._embeds(images)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    def parts(self, block: nn.Module) -> BlockParts:
        attn, mlp = block.attn, block.mlp
        hidden_norm = getattr(mlp, "ln", _identity)  # open_clip's scale_fc MLPs
        return BlockParts(
            norm1=block.ln_1,
            qkv=lambda h: F.linear(h, attn.in_proj_weight, attn.in_proj_bias),
            num_heads=attn.num_heads,
            q_norm=_identity, k_norm=_identity, attn_post=_identity,
            proj=attn.out_proj, ls1=block.ls_1, norm2=block.ln_2,
            mlp_up=lambda h: mlp.gelu(mlp.c_fc(h)), mlp_down=lambda x: mlp.c_proj(hidden_norm(x)),
            ls2=block.ls_2,
        )

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.visual._pool(tokens)[0]


class TimmViT(ViTBackbone):
    """A timm ``VisionTransformer`` (ImageNet-21k ViTs, DINOv2, SigLIP towers, ...)."""

    def __init__(self, model: nn.Module, mean, std, source: dict[str, str],
                 attr: str = "model") -> None:
        super().__init__()
        setattr(self, attr, model)
        self._attr = attr
        first = model.blocks[0]
        if not hasattr(first, "attn") or not hasattr(first.attn, "qkv"):
            raise ConfigError(f"timm model {source.get('backbone')!r} has no standard ViT blocks")
        if getattr(first.attn, "q_bias", None) is not None:
            raise ConfigError("timm ViTs with separate q/v biases (BEiT-style) are not supported yet")
        self.num_layers = len(model.blocks)
        self.width = model.embed_dim
        self.patch_size = tuple(model.patch_embed.patch_size)
        self.num_features = model.num_features
        self.image_size = int(model.patch_embed.img_size[0])
        self.mean, self.std = tuple(mean), tuple(std)
        self.source = source
        self.unused_prefixes = (f"{attr}.head.",)

    @property
    def trunk(self) -> nn.Module:
        return getattr(self, self._attr)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        trunk = self.trunk
        x = trunk._pos_embed(trunk.patch_embed(images))
        return trunk.norm_pre(trunk.patch_drop(x))

    @property
    def blocks(self) -> nn.ModuleList:
        return self.trunk.blocks

    def parts(self, block: nn.Module) -> BlockParts:
        attn, mlp = block.attn, block.mlp
        return BlockParts(
            norm1=block.norm1, qkv=attn.qkv, num_heads=attn.num_heads,
            q_norm=attn.q_norm, k_norm=attn.k_norm, attn_post=getattr(attn, "norm", _identity),
            proj=attn.proj, ls1=block.ls1, norm2=block.norm2,
            mlp_up=lambda h: mlp.act(mlp.fc1(h)), mlp_down=lambda x: mlp.fc2(mlp.norm(x)),
            ls2=block.ls2,
        )

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        trunk = self.trunk
        return trunk.forward_head(trunk.norm(tokens), pre_logits=True)
