"""Shared fixtures: tiny models and data, all offline and CPU-sized."""

from __future__ import annotations

import subprocess

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


@pytest.fixture
def finessl_cli(capsys, monkeypatch):
    """``finessl ARGS`` in this process, offline, as a CompletedProcess (code, stdout, stderr)."""
    import huggingface_hub.constants as hf_constants

    from helpers import main_exit_code

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    def run(*args):
        capsys.readouterr()
        code = main_exit_code(args)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run
