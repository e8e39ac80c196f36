"""Deterministic data streams: which images each step sees, and their augmentation seeds.

Each epoch draws ``steps x batch x world`` items from concatenated random permutations
seeded by (seed, epoch). A process takes its slice of every global batch. Every item is
delivered as a key that also fixes the random seed of its augmentation, so a resumed
run, a different number of data workers, or a re-run see exactly the same views.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class EpochSampler(Sampler[int]):
    """Yields keys ``draw * size + index`` for this process's share of one epoch."""

    def __init__(self, size: int, batch_size: int, steps: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.size, self.batch_size, self.steps, self.seed = size, batch_size, steps, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        global_batch = self.batch_size * self.world_size
        needed = self.steps * global_batch
        order = np.concatenate([rng.permutation(self.size)
                                for _ in range(math.ceil(needed / self.size))])[:needed]
        draws = np.arange(needed, dtype=np.int64) + self.epoch * needed
        # [steps, world, batch] -> this rank's items of each step, from start_step on
        order = order.reshape(self.steps, self.world_size, self.batch_size)[self.start_step:, self.rank]
        draws = draws.reshape(self.steps, self.world_size, self.batch_size)[self.start_step:, self.rank]
        keys = draws.astype(object) * self.size + order.astype(object)
        return iter(int(k) for k in keys.ravel())


class SeededItems(Dataset):
    """Decodes sampler keys; runs the item's transforms under a seed fixed by the key."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int):
        draw, index = divmod(int(key), len(self.dataset))
        item_seed = int(np.random.SeedSequence([self.seed, draw]).generate_state(1)[0])
        # torchvision draws from torch, timm's RandAugment from random and numpy.
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            random.seed(item_seed)
            np.random.seed(item_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)
