"""CNN backbones: open_clip's ModifiedResNet and any timm model used as a pooled-feature extractor."""

from __future__ import annotations

import torch
from torch import nn

from finessl.models.backbone_base import Backbone


class OpenClipCNN(Backbone):
    """A CLIP ResNet image tower; feature = its attention-pooled output."""

    def __init__(self, visual: nn.Module, mean, std, source: dict[str, str]) -> None:
        super().__init__()
        self.visual = visual
        self.num_features = visual.output_dim
        self.image_size = int(visual.image_size if isinstance(visual.image_size, int)
                              else visual.image_size[0])
        self.mean, self.std = tuple(mean), tuple(std)
        self.source = source

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


class TimmCNN(Backbone):
    """Any timm model as ``forward_head(forward_features(x), pre_logits=True)``.

    Used for CNNs (and for timm architectures without standard ViT blocks); the original
    classifier is kept aside, for zero-shot-style sanity checks such as ImageNet labels.
    """

    def __init__(self, model: nn.Module, image_size: int, mean, std, source: dict[str, str]) -> None:
        super().__init__()
        self.model = model
        self.num_features = model.num_features
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.source = source
        classifier = model.get_classifier()
        names = {id(p): n for n, p in self.named_parameters()}
        self.unused_prefixes = tuple(names[id(p)] for p in classifier.parameters())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """timm's own activation checkpointing (per stage or block, as the model defines)."""
        self.model.set_grad_checkpointing(enabled)

    def pretrained_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The model's own classifier (e.g. ImageNet-1k)."""
        return self.model(images)
