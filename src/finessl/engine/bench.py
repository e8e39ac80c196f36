"""Times training steps of a configuration: images/s, seconds per step, peak memory."""

from __future__ import annotations

import copy
import resource
import time

import torch

from finessl.builder import build_run
from finessl.config import Config
from finessl.engine.trainer import Trainer


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench(config: Config, steps: int = 10, warmup: int = 2) -> dict:
    """Runs ``warmup + steps`` real training steps (data loading included) and times them.

    Nothing is written; the caller's config is left as it was."""
    config = copy.deepcopy(config)
    config.train.steps_per_epoch = max(config.train.steps_per_epoch, steps + warmup)
    pieces = build_run(config)
    trainer = Trainer(config, pieces.model, pieces.algorithm, pieces.data)
    batches = trainer.batches(0, 0)
    for _ in range(warmup):
        trainer.train_step(next(batches))
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(trainer.device)
    began = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(next(batches))
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - began) / steps
    images = trainer.images_per_step
    return {
        "device": str(trainer.device),
        "precision": trainer.precision,
        "seconds_per_step": seconds,
        "images_per_step": images,
        "images_per_second": images / seconds,
        "peak_memory_mib": peak_memory_mib(trainer.device),
        "trainable_params": pieces.model.num_trainable_parameters(),
        "steps": steps,
    }
