"""PEFT interface: a method decides what trains and may add modules at hook points."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from finessl.config import ModelConfig
from finessl.models.backbone_base import Backbone
from finessl.registry import Registry


class Peft(nn.Module):
    """Base class. ``attach`` freezes/unfreezes backbone weights and registers the module.

    A method that adds computation implements a hook named after a point of the ViT
    forward (``before_block(index, tokens, seq_len)``); the backbone calls it there.
    """

    name = "peft"

    def attach(self, backbone: Backbone) -> None:
        backbone.peft[self.name.replace("-", "_")] = self


PEFT_METHODS: Registry[Callable[[ModelConfig, Backbone], Peft]] = Registry("PEFT method")


def attach_peft(backbone: Backbone, config: ModelConfig) -> None:
    """Freezes the backbone, then lets the configured method unfreeze or add weights."""
    factory = PEFT_METHODS.get(config.peft)
    backbone.requires_grad_(False)
    factory(config, backbone).attach(backbone)
