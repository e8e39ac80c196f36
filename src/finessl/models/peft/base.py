"""PEFT interface: a method decides what trains and may add modules at hook points."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from finessl.errors import ConfigError
from finessl.models.backbone_base import Backbone
from finessl.registry import Registry

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import ModelConfig


class Peft(nn.Module):
    """Base class. ``attach`` unfreezes backbone weights it tunes and registers the module.

    A method that adds computation implements hooks named after points of the ViT forward
    (see ``finessl.models.vit``); the backbone calls them there.
    """

    name = "peft"

    def attach(self, backbone: Backbone) -> None:
        backbone.peft[self.name.replace("-", "_")] = self


PEFT_METHODS: Registry[Callable[[ModelConfig, Backbone], Peft]] = Registry("PEFT method")


def peft_names(config: ModelConfig) -> list[str]:
    names = [n.strip() for n in config.peft.split("+") if n.strip()]
    if not names:
        raise ConfigError("model.peft is empty")
    return names


def attach_peft(backbone: Backbone, config: ModelConfig) -> None:
    """Freezes the backbone, then lets each configured method unfreeze or add weights."""
    factories = [PEFT_METHODS.get(name) for name in peft_names(config)]
    backbone.requires_grad_(False)
    for factory in factories:
        factory(config, backbone).attach(backbone)


def require_vit(backbone: Backbone, method: str) -> None:
    if not backbone.is_vit:
        raise ConfigError(f"model.peft {method!r} needs a ViT backbone; for CNNs use "
                          "'bn-tuning', 'bitfit', 'ssf', 'full' or 'linear'")


def tuned_blocks(backbone: Backbone, config: ModelConfig) -> list[int]:
    """Indices of the blocks a block-wise method applies to: all, or the last ``partial``."""
    layers = backbone.num_layers
    k = layers if config.partial is None else config.partial
    if not 1 <= k <= layers:
        raise ConfigError(f"model.partial must be between 1 and {layers}, got {config.partial}")
    return list(range(layers - k, layers))


class PerBlock(Peft):
    """A method with one set of parameters per tuned block, looked up by block index."""

    def __init__(self, backbone: Backbone, config: ModelConfig, make: Callable[[], nn.Module]):
        super().__init__()
        require_vit(backbone, self.name)
        self.block_ids = tuned_blocks(backbone, config)
        self.slot = {b: i for i, b in enumerate(self.block_ids)}
        self.blocks = nn.ModuleList(make() for _ in self.block_ids)

    def module_for(self, index: int) -> nn.Module | None:
        slot = self.slot.get(index)
        return None if slot is None else self.blocks[slot]
