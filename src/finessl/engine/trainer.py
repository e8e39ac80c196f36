"""The training loop: epochs of steps, evaluation, logs and checkpoints in a run directory.

Run directory (written by the main process only):
  config.yaml          resolved configuration
  metrics.jsonl        one JSON object per line ("kind": "train" or "eval")
  tensorboard/         the same scalars as TensorBoard event files (if tensorboard is installed)
  adapter.safetensors  trainable weights only, with metadata naming the backbone
  state.pt             optimizer / schedule / algorithm state / RNG to resume from
  test_predictions.safetensors  test-set logits and labels of the latest evaluation
  final.json           final metrics, steps, seconds, trainable parameters
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from finessl.algorithms import Algorithm, Batch
from finessl.config import Config, TrainConfig
from finessl.data.gpu_augment import BatchAugment
from finessl.data.ssl_data import SSLData
from finessl.engine.checkpoint import save_adapter, save_predictions, save_state, write_json
from finessl.engine.distributed import DistEnv
from finessl.engine.sampling import EpochSampler, SeededItems
from finessl.errors import ConfigError, FinesslError
from finessl.eval.metrics import classification_metrics, predict_logits

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingInterrupted(FinesslError):
    """SIGINT / SIGTERM arrived; the run was checkpointed and can be resumed."""


# --------------------------------------------------------------------------- device & precision


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device is 'cuda' but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
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


def make_loader(dataset, batch_size: int, steps: int, seed: int, workers: int,
                device: torch.device, dist: DistEnv) -> DataLoader:
    return DataLoader(
        SeededItems(dataset, seed),
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), batch_size, steps, seed, dist.rank, dist.world_size),
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


SHOWN_LOGS = ("loss", "mask", "pl_acc", "lr")


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


class TensorBoardLog(Callback):
    """Scalars to ``run_dir/tensorboard`` (skipped, with one log line, without tensorboard)."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("tensorboard is not installed; no event files are written")
            self.writer = None
            return
        self.writer = SummaryWriter(str(folder))

    def on_step(self, step: int, logs: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in logs.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def on_eval(self, step: int, metrics: dict) -> None:
        if self.writer is not None:
            for key in ("top1", "balanced_acc", "ece", "nll", "top5"):
                if key in metrics:
                    self.writer.add_scalar(f"eval/{key}", metrics[key], step)
            self.writer.flush()

    def on_train_end(self, final: dict) -> None:
        if self.writer is not None:
            self.writer.close()


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """Records SIGINT / SIGTERM instead of dying mid-step; restores the handlers after."""
    received: list[int] = []
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda number, _frame: received.append(number))
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    dist: DistEnv = field(default_factory=DistEnv)

    def __post_init__(self) -> None:
        cfg: TrainConfig = self.config.train
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.autocast = autocast_for(self.precision, self.device)
        self.model.to(self.device)
        if cfg.channels_last and self.device.type == "cuda" and not self.model.backbone.is_vit:
            self.model.to(memory_format=torch.channels_last)
        self.algorithm.to(self.device)
        self.algorithm.dist = self.dist
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
        self.last_metrics: dict | None = None
        self.net = self.model
        if self.dist.enabled:  # the standard engine; unused = heads an algorithm leaves alone
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                           find_unused_parameters=True)
        self.forward = torch.compile(self.net) if cfg.compile else self.net
        workers, seed = self.config.data.num_workers, self.config.seed
        self.labeled_loader = make_loader(self.data.labeled, cfg.batch_size, cfg.steps_per_epoch,
                                          seed, workers, self.device, self.dist)
        self.unlabeled_loader = None
        if self.algorithm.uses_unlabeled:
            self.unlabeled_loader = make_loader(
                self.data.unlabeled, cfg.batch_size * self.config.algorithm.uratio,
                cfg.steps_per_epoch, seed + 1, workers, self.device, self.dist)
        self.gpu_augment = None
        if self.config.data.gpu_augment:
            backbone = self.model.backbone
            args = (backbone.image_size, backbone.mean, backbone.std)
            self.gpu_augment = (BatchAugment(*args, strong=False), BatchAugment(*args, strong=True))
            self.strong_views = type(self.algorithm).strong_views(self.config.algorithm)
        shard = list(range(self.dist.rank, len(self.data.test), self.dist.world_size))
        self.test_loader = DataLoader(Subset(self.data.test, shard), batch_size=cfg.eval_batch_size,
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
        if self.dist.is_main:
            save_adapter(self.output / "adapter.safetensors", self.model.trainable_state_dict(),
                         self.metadata)
            save_state(self.output / "state.pt", self.state_dict())
        self.dist.barrier()

    # ------------------------------------------------------------------ loop

    def _batches(self, epoch: int, start: int) -> Iterator[Batch]:
        self.labeled_loader.sampler.set_epoch(epoch, start)
        labeled = iter(self.labeled_loader)
        unlabeled = None
        if self.unlabeled_loader is not None:
            self.unlabeled_loader.sampler.set_epoch(epoch, start)
            unlabeled = iter(self.unlabeled_loader)
        first = epoch * self.config.train.steps_per_epoch + start
        for step, (images, labels) in enumerate(labeled, start=first):
            augment = self._device_augment(step)
            batch = Batch(augment(images, False), labels.to(self.device))
            if unlabeled is not None:
                index, weak, *strong, truth = next(unlabeled)
                batch.unlabeled_index = index.to(self.device)
                batch.weak = augment(weak, False)
                if self.gpu_augment is not None:
                    strong = [weak] * self.strong_views
                batch.strong = [augment(s, True) for s in strong]
                batch.unlabeled_labels = truth.to(self.device)
            yield batch

    def _device_augment(self, step: int):
        """Moves a batch to the device, augmenting it there when data.gpu_augment is on."""
        if self.gpu_augment is None:
            return lambda images, strong: self._to_device(images)
        generator = torch.Generator(self.device)
        generator.manual_seed(int(np.random.SeedSequence(
            [self.config.seed, self.dist.rank, step]).generate_state(1)[0]))
        weak, strong_aug = self.gpu_augment
        return lambda images, strong: self._to_device(
            (strong_aug if strong else weak)(images.to(self.device, non_blocking=True), generator))

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.config.train.channels_last and images.dim() == 4 and self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def train_step(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        with self.autocast():
            result = self.algorithm.step(self.forward, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(result.loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return result.logs

    def evaluate(self) -> dict:
        logits, labels = predict_logits(self.model, self.test_loader, self.device, self.autocast)
        logits = self.dist.gather_uneven(logits.to(self.device)).cpu()
        labels = self.dist.gather_uneven(labels.to(self.device)).cpu()
        if self.dist.is_main:  # the latest test predictions, for reports
            save_predictions(self.output / "test_predictions.safetensors", logits, labels)
        return classification_metrics(logits, labels)

    def fit(self) -> dict:
        cfg = self.config.train
        eval_every = cfg.eval_every or cfg.steps_per_epoch
        main = self.dist.is_main
        metrics_file = (self.output / "metrics.jsonl").open("a") if main else None
        callbacks = list(self.callbacks) if main else []
        for callback in callbacks:
            callback.on_train_start(cfg.steps, self.step)
        try:
            with stop_signals() as received:
                self._loop(cfg, eval_every, metrics_file, callbacks, received)
        finally:
            if metrics_file is not None:
                metrics_file.close()
        final = self._final()
        for callback in callbacks:
            callback.on_train_end(final)
        return final

    def _loop(self, cfg: TrainConfig, eval_every: int, metrics_file, callbacks, received) -> None:
        while self.step < cfg.steps:
            epoch, start = divmod(self.step, cfg.steps_per_epoch)
            if start == 0:
                self.algorithm.on_epoch_start(epoch)
            began = time.time()
            for batch in self._batches(epoch, start):
                logs = self.train_step(batch)
                self.step += 1
                logs["lr"] = self.optimizer.param_groups[0]["lr"]
                for callback in callbacks:
                    callback.on_step(self.step, logs)
                if metrics_file is not None and self.step % cfg.log_every == 0:
                    self._write(metrics_file, {"kind": "train", "step": self.step,
                                               "epoch": epoch, **logs})
                end_of_epoch = self.step % cfg.steps_per_epoch == 0
                evaluate = self.step % eval_every == 0 or self.step == cfg.steps
                checkpoint = (end_of_epoch or evaluate or bool(received) or
                              (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0))
                if checkpoint:
                    self.seconds += time.time() - began
                    if evaluate:
                        self._eval_and_log(metrics_file, callbacks, epoch)
                    if end_of_epoch:
                        self.scheduler.step()
                    self.save()
                    began = time.time()
                if received:
                    raise TrainingInterrupted(
                        f"stopped by signal {received[0]} at step {self.step}; checkpoint saved. "
                        f"Continue with: finessl train --resume {self.output}")
                if self.step >= cfg.steps or end_of_epoch:
                    break

    def _eval_and_log(self, metrics_file, callbacks, epoch: int) -> None:
        metrics = self.evaluate()
        self.last_metrics = metrics
        diagnostics = self.algorithm.diagnostics() if hasattr(self.algorithm, "diagnostics") else None
        if metrics_file is not None:
            self._write(metrics_file, {"kind": "eval", "step": self.step, "epoch": epoch,
                                       **{k: v for k, v in metrics.items() if k != "per_class_acc"},
                                       "per_class_acc": metrics["per_class_acc"]})
            if diagnostics is not None:
                self._write(metrics_file, {"kind": "pseudo_labels", "step": self.step,
                                           "epoch": epoch, **diagnostics})
        for callback in callbacks:
            callback.on_eval(self.step, metrics)

    def _final(self) -> dict:
        metrics = self.last_metrics or self.evaluate()
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
            "world_size": self.dist.world_size,
        }
        if self.dist.is_main:
            write_json(self.output / "final.json", final)
        return final

    @staticmethod
    def _write(handle, record: dict) -> None:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
