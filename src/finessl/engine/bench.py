"""Times training steps of a configuration: images/s, seconds per step, peak memory."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import torch

from finessl.algorithms import algorithm_class, build_algorithm
from finessl.config import Config
from finessl.data.ssl_data import build_ssl_data
from finessl.engine.trainer import Trainer
from finessl.models import build_backbone, build_model


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench(config: Config, steps: int = 10, warmup: int = 2) -> dict:
    """Runs ``warmup + steps`` real training steps (data loading included) and times them."""
    backbone = build_backbone(config.model)
    views = algorithm_class(config.algorithm).strong_views(config.algorithm)
    data = build_ssl_data(config.data, backbone.image_size, backbone.mean, backbone.std,
                          config.seed, views)
    model = build_model(config.model, data.num_classes, backbone=backbone, classes=data.classes)
    algorithm = build_algorithm(config.algorithm, data.num_classes, len(data.unlabeled))
    config.train.steps_per_epoch = max(config.train.steps_per_epoch, steps + warmup)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, model, algorithm, data, Path(tmp))
        batches = trainer._batches(0, 0)
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
    batch = config.train.batch_size
    unlabeled = batch * config.algorithm.uratio if algorithm.uses_unlabeled else 0
    images = batch + unlabeled * (1 + views)
    return {
        "device": str(trainer.device),
        "precision": trainer.precision,
        "seconds_per_step": seconds,
        "images_per_step": images,
        "images_per_second": images / seconds,
        "peak_memory_mib": peak_memory_mib(trainer.device),
        "trainable_params": model.num_trainable_parameters(),
        "steps": steps,
    }
