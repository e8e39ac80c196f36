"""The trained model: a backbone (with PEFT) feeding a main and an auxiliary cosine head."""

from __future__ import annotations

import copy

import torch
from torch import nn

from finessl.config import ModelConfig
from finessl.models.backbones import Backbone, build_backbone
from finessl.models.heads import CosineHead
from finessl.models.peft import attach_peft


class FinesslModel(nn.Module):
    """``forward`` gives main-head logits (what inference uses).

    The auxiliary head (FineSSL's decoupled head) starts as a copy of the main head and
    is fed stop-gradient features by the algorithms that use it.
    """

    def __init__(self, backbone: Backbone, num_classes: int, logit_scale: float = 1 / 0.07):
        super().__init__()
        self.backbone = backbone
        self.head = CosineHead(backbone.num_features, num_classes, logit_scale)
        self.aux_head = copy.deepcopy(self.head)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def train(self, mode: bool = True) -> FinesslModel:
        super().train(mode)
        self.backbone.set_train_mode(mode)
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights that training changes: PEFT, unfrozen backbone parts, both heads."""
        state = {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
        if self.backbone.trains_norm_statistics:
            state.update(
                {f"backbone.{n}": b.detach() for n, b in self.backbone.named_buffers()
                 if "running_" in n or n.endswith("num_batches_tracked")}
            )
        return state

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def build_model(config: ModelConfig, num_classes: int, backbone: Backbone | None = None):
    """Builds backbone + PEFT + heads from a config (or around a user-supplied backbone)."""
    backbone = backbone if backbone is not None else build_backbone(config)
    attach_peft(backbone, config)
    return FinesslModel(backbone, num_classes, config.logit_scale)
