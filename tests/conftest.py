"""Shared fixtures: tiny models and data, all offline and CPU-sized."""

from __future__ import annotations

import pytest
import torch

from finessl.config import ModelConfig


@pytest.fixture(autouse=True)
def _fast_torch():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def tiny_vit_config() -> ModelConfig:
    from helpers import model_config

    return model_config(backbone="tiny-vit", pretrained="none", peft="vpt-deep", vpt_tokens=3,
                        image_size=32)
