"""Cosine classifier heads: ``s * <z/|z|, w_k/|w_k|>`` with a learnable scale ``s``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineHead(nn.Module):
    """Cosine-similarity classifier; rows start uniform(-1, 1) renormalised to unit norm."""

    def __init__(self, num_features: int, num_classes: int, scale: float = 1 / 0.07) -> None:
        super().__init__()
        weight = torch.empty(num_classes, num_features).uniform_(-1, 1)
        self.weight = nn.Parameter(F.normalize(weight, dim=1))
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = F.normalize(features.float(), dim=-1)
        w = F.normalize(self.weight.float(), dim=-1)
        return self.scale * z @ w.t()
