"""Where a backbone's weights come from: pretrained, a file, or a seeded random start."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def is_random_init(pretrained: str | None) -> bool:
    return pretrained is None or str(pretrained).lower() in {"", "none", "random"}


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random initialisation that does not disturb the caller's RNG streams."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
