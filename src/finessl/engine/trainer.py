"""The training loop: epochs of steps, evaluation, logs and checkpoints in a run directory.

Run directory:
  config.yaml          resolved configuration
  metrics.jsonl        one JSON object per line ("kind": "train" or "eval")
  adapter.safetensors  trainable weights only, with metadata naming the backbone
  state.pt             optimizer / schedule / algorithm state to resume from
  final.json           final metrics, steps, seconds, trainable parameters
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from finessl.algorithms import Algorithm, Batch
from finessl.config import Config, TrainConfig
from finessl.data.ssl_data import SSLData
from finessl.engine.checkpoint import save_adapter, save_state, write_json
from finessl.errors import ConfigError
from finessl.eval.metrics import classification_metrics, predict_logits

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------- device & precision


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if name not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of auto, {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 needs CUDA; use train.precision bf16 on the CPU")
    return name


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


# --------------------------------------------------------------------------- sampling


class EpochSampler(Sampler[int]):
    """Indices for one epoch of ``steps * batch_size`` draws, seeded by (seed, epoch).

    Concatenated random permutations, so every image is seen equally often. Seeding per
    epoch and skipping consumed steps lets a resumed run continue the same stream.
    """

    def __init__(self, size: int, batch_size: int, steps: int, seed: int) -> None:
        self.size, self.batch_size, self.steps, self.seed = size, batch_size, steps, seed
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        needed = self.steps * self.batch_size
        perms = [rng.permutation(self.size) for _ in range(math.ceil(needed / self.size))]
        order = np.concatenate(perms)[self.start_step * self.batch_size: needed]
        return iter(order.tolist())


def make_loader(dataset, batch_size: int, steps: int, seed: int, workers: int,
                device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), batch_size, steps, seed),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
    )


# --------------------------------------------------------------------------- callbacks


class Callback:
    """Hooks the application uses to show progress; the library itself only logs."""

    def on_train_start(self, total_steps: int, start_step: int) -> None: ...
    def on_step(self, step: int, logs: dict[str, float]) -> None: ...
    def on_eval(self, step: int, metrics: dict) -> None: ...
    def on_train_end(self, final: dict) -> None: ...


class LogProgress(Callback):
    """Plain log lines every ``every`` steps (for files and non-terminals)."""

    def __init__(self, every: int = 50) -> None:
        self.every, self.total, self.start = every, 0, time.time()

    def on_train_start(self, total_steps: int, start_step: int) -> None:
        self.total, self.start = total_steps, time.time()

    def on_step(self, step: int, logs: dict[str, float]) -> None:
        if step % self.every == 0 or step == self.total:
            shown = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k in SHOWN_LOGS)
            log.info("step %d/%d %s (%.1fs)", step, self.total, shown, time.time() - self.start)

    def on_eval(self, step: int, metrics: dict) -> None:
        log.info("eval step %d: top1 %.2f balanced %.2f ece %.4f", step, metrics["top1"],
                 metrics["balanced_acc"], metrics["ece"])


SHOWN_LOGS = ("loss", "mask", "pl_acc", "lr")


# --------------------------------------------------------------------------- trainer


@dataclass
class Trainer:
    """Runs ``config.train.steps`` steps of ``algorithm`` on ``model`` over ``data``."""

    config: Config
    model: nn.Module
    algorithm: Algorithm
    data: SSLData
    output: Path
    callbacks: Sequence[Callback] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        cfg: TrainConfig = self.config.train
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.autocast = autocast_for(self.precision, self.device)
        self.model.to(self.device)
        self.algorithm.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("nothing to train: the model has no trainable parameters")
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.epochs = math.ceil(cfg.steps / cfg.steps_per_epoch)
        self.scheduler = self._schedule(cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step = 0
        self.seconds = 0.0
        workers = self.config.data.num_workers
        seed = self.config.seed
        self.labeled_loader = make_loader(self.data.labeled, cfg.batch_size, cfg.steps_per_epoch,
                                          seed, workers, self.device)
        self.unlabeled_loader = None
        if self.algorithm.uses_unlabeled:
            self.unlabeled_loader = make_loader(
                self.data.unlabeled, cfg.batch_size * self.config.algorithm.uratio,
                cfg.steps_per_epoch, seed + 1, workers, self.device)
        self.test_loader = DataLoader(self.data.test, batch_size=cfg.eval_batch_size,
                                      num_workers=workers, pin_memory=self.device.type == "cuda")

    def _schedule(self, cfg: TrainConfig):
        if cfg.schedule == "cosine":  # stepped once per epoch, as in the reference
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.epochs)
        if cfg.schedule == "constant":
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        raise ConfigError(f"train.schedule must be 'cosine' or 'constant', got {cfg.schedule!r}")

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "seconds": self.seconds,
            "model": self.model.trainable_state_dict(),
            "algorithm": self.algorithm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                    "python": random.getstate()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.seconds = state["step"], state["seconds"]
        missing = set(self.model.trainable_state_dict()) - set(state["model"])
        if missing:
            raise ConfigError(f"checkpoint lacks trainable weights: {sorted(missing)[:5]}")
        self.model.load_state_dict(state["model"], strict=False)
        self.algorithm.load_state_dict(state["algorithm"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    def save(self) -> None:
        save_adapter(self.output / "adapter.safetensors", self.model.trainable_state_dict(),
                     self.metadata)
        save_state(self.output / "state.pt", self.state_dict())

    # ------------------------------------------------------------------ loop

    def _batches(self, epoch: int, start: int) -> Iterator[Batch]:
        self.labeled_loader.sampler.set_epoch(epoch, start)
        labeled = iter(self.labeled_loader)
        unlabeled = None
        if self.unlabeled_loader is not None:
            self.unlabeled_loader.sampler.set_epoch(epoch, start)
            unlabeled = iter(self.unlabeled_loader)
        for images, labels in labeled:
            batch = Batch(images.to(self.device, non_blocking=True), labels.to(self.device))
            if unlabeled is not None:
                index, weak, *strong, truth = next(unlabeled)
                batch.unlabeled_index = index.to(self.device)
                batch.weak = weak.to(self.device, non_blocking=True)
                batch.strong = [s.to(self.device, non_blocking=True) for s in strong]
                batch.unlabeled_labels = truth.to(self.device)
            yield batch

    def train_step(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        with self.autocast():
            result = self.algorithm.step(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(result.loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return result.logs

    def evaluate(self) -> dict:
        logits, labels = predict_logits(self.model, self.test_loader, self.device, self.autocast)
        return classification_metrics(logits, labels)

    def fit(self) -> dict:
        cfg = self.config.train
        eval_every = cfg.eval_every or cfg.steps_per_epoch
        metrics_file = (self.output / "metrics.jsonl").open("a")
        for callback in self.callbacks:
            callback.on_train_start(cfg.steps, self.step)
        try:
            while self.step < cfg.steps:
                epoch, start = divmod(self.step, cfg.steps_per_epoch)
                if start == 0:
                    self.algorithm.on_epoch_start(epoch)
                began = time.time()
                for batch in self._batches(epoch, start):
                    logs = self.train_step(batch)
                    self.step += 1
                    logs["lr"] = self.optimizer.param_groups[0]["lr"]
                    for callback in self.callbacks:
                        callback.on_step(self.step, logs)
                    if self.step % cfg.log_every == 0:
                        self._write(metrics_file, {"kind": "train", "step": self.step,
                                                   "epoch": epoch, **logs})
                    end_of_epoch = self.step % cfg.steps_per_epoch == 0
                    if self.step % eval_every == 0 or self.step == cfg.steps or end_of_epoch:
                        self.seconds += time.time() - began
                        began = time.time()
                        if self.step % eval_every == 0 or self.step == cfg.steps:
                            self._eval_and_log(metrics_file, epoch)
                        if end_of_epoch:
                            self.scheduler.step()
                        self.save()
                    if self.step >= cfg.steps or end_of_epoch:
                        break
        finally:
            metrics_file.close()
        final = self._final()
        for callback in self.callbacks:
            callback.on_train_end(final)
        return final

    def _eval_and_log(self, metrics_file, epoch: int) -> None:
        metrics = self.evaluate()
        self.last_metrics = metrics
        self._write(metrics_file, {"kind": "eval", "step": self.step, "epoch": epoch,
                                   **{k: v for k, v in metrics.items() if k != "per_class_acc"}})
        for callback in self.callbacks:
            callback.on_eval(self.step, metrics)

    def _final(self) -> dict:
        metrics = getattr(self, "last_metrics", None) or self.evaluate()
        final = {
            "top1": metrics["top1"],
            "balanced_acc": metrics["balanced_acc"],
            "ece": metrics["ece"],
            "nll": metrics["nll"],
            **({"top5": metrics["top5"]} if "top5" in metrics else {}),
            "per_class_acc": metrics["per_class_acc"],
            "steps": self.step,
            "seconds": round(self.seconds, 2),
            "trainable_params": self.model.num_trainable_parameters(),
            "algorithm": self.config.algorithm.name,
            "device": str(self.device),
            "precision": self.precision,
        }
        write_json(self.output / "final.json", final)
        return final

    @staticmethod
    def _write(handle, record: dict) -> None:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
