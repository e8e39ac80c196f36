"""Where a backbone's weights come from: pretrained, a file, or a seeded random start."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from finessl.errors import FinesslError, WeightsUnavailableError


def is_random_init(pretrained: str | None) -> bool:
    return pretrained is None or str(pretrained).lower() in {"", "none", "random"}


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random initialisation that does not disturb the caller's RNG streams."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def reading_weights_file(path: str | None) -> Iterator[None]:
    """Loading a user's weights file: any failure (a pickle of objects, a truncated or foreign
    file) is one line naming the file. Only tensors are ever read (``weights_only``)."""
    if path is None:
        yield
        return
    try:
        yield
    except FinesslError:
        raise
    except Exception as error:  # noqa: BLE001 (torch, open_clip and timm raise many kinds)
        first = str(error).splitlines()[0][:160] if str(error) else ""
        raise WeightsUnavailableError(
            f"{path} is not a weights file finessl can load ({type(error).__name__}: {first}). "
            "Give a .safetensors file or a state dict of tensors (torch.save(model.state_dict())); "
            "pickled objects are never loaded") from None
