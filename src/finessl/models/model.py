"""The trained model: a backbone (with PEFT) feeding a main and an auxiliary cosine head."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from finessl.errors import AdapterMismatch, ConfigError
from finessl.models.backbones import Backbone, build_backbone
from finessl.models.heads import CosineHead
from finessl.models.peft import attach_peft
from finessl.models.zeroshot import semantic_head_weights

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import ModelConfig


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

    def forward(self, images: torch.Tensor, aux: bool = False, aux_stop_gradient: bool = True):
        """Main-head logits; with ``aux``, also the auxiliary head's (on stop-gradient features).

        Algorithms call the heads through here, so that DDP sees every parameter in forward.
        """
        features = self.features(images)
        logits = self.head(features)
        if not aux:
            return logits
        return logits, self.aux_head(features.detach() if aux_stop_gradient else features)

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

    @torch.no_grad()
    def frozen_fingerprint(self) -> float:
        """A checksum of the backbone's frozen weights: a run rebuilt from its config must
        find the same frozen model (same pretrained file, same init_seed)."""
        trained = {id(p) for p in self.parameters() if p.requires_grad}
        total = 0.0
        for index, param in enumerate(self.backbone.parameters()):
            if id(param) not in trained:
                values = param.detach().to("cpu", torch.float64)
                total += float(values.abs().sum()) + (index % 7 + 1) * float(values.sum())
        return total

    # Metadata an adapter records that the model it is loaded into must match (key, what).
    CHECKED_METADATA = (("backbone", "backbone"), ("pretrained", "pretrained weights"),
                        ("activation", "activation"))

    def check_trainable(self, state: dict[str, torch.Tensor], meta: dict | None = None) -> None:
        """Trained weights (and their adapter metadata) that do not fit this model raise
        ``AdapterMismatch`` naming why: the one fit check of loading, warm starts, resumes
        and the SemiKD teacher."""
        problem = self._mismatch(state, meta or {})
        if problem:
            raise AdapterMismatch(problem)

    def load_trainable(self, state: dict[str, torch.Tensor], meta: dict | None = None) -> None:
        """Checks (``check_trainable``) and loads trained weights: PEFT, unfrozen parts, heads."""
        self.check_trainable(state, meta)
        self.load_state_dict(state, strict=False)

    def _mismatch(self, state: dict[str, torch.Tensor], meta: dict) -> str | None:
        for key, what in self.CHECKED_METADATA:
            built = self.backbone.source.get(key)
            if key in meta and built is not None and str(built) != str(meta[key]):
                return f"this model's {what} is {built!r}, the weights were trained with {meta[key]!r}"
        if not isinstance(state, dict):
            return "the weights are not a name -> tensor mapping"
        ours = self.trainable_state_dict()
        if set(ours) != set(state) or any(ours[k].shape != state[k].shape or
                                          ours[k].is_floating_point() != state[k].is_floating_point()
                                          for k in ours):
            return ("the adapter does not fit this model (another backbone, PEFT method or its "
                    "settings, or class count)")
        fingerprint = meta.get("frozen_fingerprint")
        if fingerprint is not None and not meta.get("user_backbone"):
            rebuilt = self.frozen_fingerprint()
            if abs(rebuilt - fingerprint) > 1e-6 * max(1.0, abs(fingerprint)):
                return ("the frozen backbone differs from the one the weights were trained on "
                        "(other pretrained weights, or another model.init_seed)")
        return None

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def build_model(config: ModelConfig, num_classes: int, backbone: Backbone | None = None,
                classes: list[str] | None = None) -> FinesslModel:
    """Builds backbone + PEFT + heads from a config (or around a user-supplied backbone).

    ``model.head_init: text`` initialises both heads from CLIP text embeddings of the
    class names (``classes``); the auxiliary head is always a copy of the main head.
    """
    backbone = backbone if backbone is not None else build_backbone(config)
    attach_peft(backbone, config)
    if config.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    model = FinesslModel(backbone, num_classes, config.logit_scale)
    if config.head_init == "text":
        if classes is None:
            raise ConfigError("model.head_init 'text' needs the class names")
        weights = semantic_head_weights(backbone, classes, config.text_template)
        with torch.no_grad():
            model.head.weight.copy_(weights)
            model.aux_head.weight.copy_(weights)
    elif config.head_init != "random":
        raise ConfigError(f"model.head_init must be 'random' or 'text', got {config.head_init!r}")
    return model
