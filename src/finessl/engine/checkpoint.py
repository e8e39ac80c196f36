"""Atomic files: adapter-only safetensors and resumable training state."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Writes through a temporary file in the same folder, then renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def save_adapter(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Trainable weights only; metadata values are JSON-encoded strings."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_adapter(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with safe_open(str(path), framework="pt") as handle:
        raw = handle.metadata() or {}
    return load_file(str(path)), {k: json.loads(v) for k, v in raw.items()}


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def save_predictions(path: Path, logits: torch.Tensor, labels: torch.Tensor) -> None:
    tensors = {"logits": logits.float().contiguous(), "labels": labels.long().contiguous()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def load_predictions(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = load_file(str(path))
    return tensors["logits"], tensors["labels"]
