"""What every backbone offers the rest of the library."""

from __future__ import annotations

import torch
from torch import nn

from finessl.errors import ConfigError


class Backbone(nn.Module):
    """A feature extractor ``images [N, 3, H, W] -> features [N, num_features]``.

    PEFT methods register themselves in ``self.peft`` and flip ``requires_grad``; the rest
    of the weights stay frozen. ``source`` names the model and its weights, so a run can
    store only what it trained and rebuild the rest.
    """

    is_vit = False

    def __init__(self) -> None:
        super().__init__()
        self.peft = nn.ModuleDict()
        self.num_features: int = 0
        self.image_size: int = 224
        self.mean: tuple[float, ...] = (0.5, 0.5, 0.5)
        self.std: tuple[float, ...] = (0.5, 0.5, 0.5)
        self.source: dict[str, str] = {}
        # Parameters that never influence the features (e.g. CLIP's projection).
        self.unused_prefixes: tuple[str, ...] = ()
        # Whether batch-norm statistics are updated in training (full fine-tuning).
        self.trains_norm_statistics = False
        # CLIP text side (models.zeroshot.ClipText) when the backbone has one.
        self.text = None

    def feature_parameters(self):
        """(name, parameter) pairs that influence the features."""
        for name, param in self.named_parameters():
            if not name.startswith(self.unused_prefixes):
                yield name, param

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute activations in the backward pass instead of storing them."""
        if enabled:
            raise ConfigError(f"model.grad_checkpointing is not supported for {type(self).__name__} "
                              "backbones")

    def set_train_mode(self, mode: bool) -> None:
        """Frozen batch-norm layers keep their pretrained statistics in training."""
        if mode and not self.trains_norm_statistics:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()


class ModuleBackbone(Backbone):
    """Wraps any user module mapping a batch to ``[N, D]`` features."""

    def __init__(self, module: nn.Module, num_features: int, image_size: int = 224,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), name: str = "custom") -> None:
        super().__init__()
        self.module = module
        self.num_features = num_features
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.source = {"backbone": name, "pretrained": "user-supplied"}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)
