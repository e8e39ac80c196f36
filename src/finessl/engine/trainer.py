"""The training loop: epochs of steps, evaluation and checkpoints.

The trainer only trains. Where the run's files go is ``finessl.rundir``; what is reported
and to whom, ``callbacks``; device and precision, ``device``; optimizer and schedule,
``optim``. A step is ``train.accumulate`` micro-batches (the batch split in order) whose
gradients add up before one optimizer step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from finessl.algorithms import Algorithm, Batch, trains_aux_head
from finessl.config import Config, TrainConfig
from finessl.data.ssl_data import SSLData
from finessl.device import autocast_for, resolve_device, resolve_precision
from finessl.distributed import DistEnv
from finessl.engine.callbacks import Callback
from finessl.engine.optim import build_optimizer, build_scheduler
from finessl.engine.sampling import EpochSampler, SeededItems
from finessl.errors import AdapterMismatch, ConfigError, TrainingDiverged, TrainingInterrupted
from finessl.eval.estimate import Estimate, data_outputs, estimate, pool_view, read_pool_prior
from finessl.eval.metrics import classification_metrics, predict_logits
from finessl.rundir import RunDir, RunDirError

log = logging.getLogger(__name__)


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


# After SIGINT / SIGTERM the current step may finish (and be checkpointed) for this long;
# a step still running then, or a second signal, is abandoned at once.
STOP_GRACE_SECONDS = 5.0
# Consecutive non-finite losses tolerated under fp16, where the grad scaler skips such steps.
FP16_NONFINITE_STEPS = 5


class StopNow(BaseException):
    """Raised inside a step that a stop signal abandons (never caught by ``except Exception``)."""


class StopSignals:
    """SIGINT / SIGTERM: recorded so the step in progress can end with a checkpoint, but
    within ``grace`` seconds (or at a second signal) the step is abandoned (``StopNow``) and
    the run keeps its last checkpoint. Writing a checkpoint is never interrupted."""

    def __init__(self, grace: float = STOP_GRACE_SECONDS) -> None:
        self.grace, self.received, self.writing, self.pending = grace, [], False, False

    def _on_signal(self, number: int, _frame) -> None:
        self.received.append(number)
        if len(self.received) == 1:
            signal.setitimer(signal.ITIMER_REAL, self.grace)
        else:
            self._stop()

    def _stop(self, *_args) -> None:
        if self.writing:
            self.pending = True
        else:
            raise StopNow()

    @contextlib.contextmanager
    def writing_checkpoint(self) -> Iterator[None]:
        self.writing = True
        try:
            yield
        finally:
            self.writing = False
        if self.pending:
            raise StopNow()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        previous = {}
        try:
            for sig, handler in ((signal.SIGINT, self._on_signal), (signal.SIGTERM, self._on_signal),
                                 (signal.SIGALRM, self._stop)):
                previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield self
        finally:
            if previous:
                signal.setitimer(signal.ITIMER_REAL, 0)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def check_resources(config: Config, data: SSLData, unlabeled_batch: int, images_per_step: int,
                    device: torch.device) -> None:
    """Refuses, before any work, batches the data cannot fill or the machine cannot hold."""
    cfg, pool = config.train, len(data.unlabeled)
    if unlabeled_batch > pool:
        raise ConfigError(
            f"the unlabeled batch (train.batch_size {cfg.batch_size} x algorithm.uratio "
            f"{unlabeled_batch // cfg.batch_size} = {unlabeled_batch:,} images) is larger than the unlabeled "
            f"pool ({pool:,} images); lower algorithm.uratio or train.batch_size")
    sample = data.labeled[0][0]
    per_image = sample.numel() * sample.element_size() if isinstance(sample, torch.Tensor) else 0
    available = _memory_bytes(device)
    inputs = images_per_step * per_image
    if available and inputs > available:
        raise ConfigError(
            f"one step needs {images_per_step:,} images ({inputs / 2**30:.1f} GiB for the inputs "
            f"alone), more than {device.type} memory ({available / 2**30:.1f} GiB); lower "
            "train.batch_size or algorithm.uratio (train.accumulate splits a batch)")
    order = cfg.steps_per_epoch * (cfg.batch_size + unlabeled_batch) * 64  # the epoch's draw order
    if available and order > _memory_bytes(torch.device("cpu")) / 4:
        raise ConfigError(
            f"train.steps_per_epoch {cfg.steps_per_epoch:,}: the order of one epoch's images "
            f"({order / 2**30:.1f} GiB) would not fit in memory; use fewer steps per epoch")
    cpus = os.cpu_count() or 1
    if config.data.num_workers > 4 * cpus:
        raise ConfigError(f"data.num_workers {config.data.num_workers} is far more than this "
                          f"machine's {cpus} CPU(s); use at most {4 * cpus}")


def _memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _mean_logs(parts: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for part in parts for k in part}
    return {k: sum(p[k] for p in parts if k in p) / sum(1 for p in parts if k in p) for k in keys}


@dataclass
class Trainer:
    """Runs ``config.train.steps`` steps of ``algorithm`` on ``model`` over ``data``.

    ``run``: where checkpoints, predictions and final metrics go (None: nowhere, e.g. for
    timing). Only the main process writes and calls ``callbacks``.
    """

    config: Config
    model: nn.Module
    algorithm: Algorithm
    data: SSLData
    run: RunDir | None = None
    callbacks: Sequence[Callback] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    dist: DistEnv = field(default_factory=DistEnv)
    notes: dict = field(default_factory=dict)  # further facts for final.json (e.g. ood_dropped)

    def __post_init__(self) -> None:
        cfg: TrainConfig = self.config.train
        self.needs = self.algorithm.needs(self.algorithm.config)  # batch shape and views
        if cfg.batch_size % cfg.accumulate:
            raise ConfigError(f"train.batch_size {cfg.batch_size} must be a multiple of "
                              f"train.accumulate {cfg.accumulate}")
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.autocast = autocast_for(self.precision, self.device)
        self.model.to(self.device)
        if cfg.channels_last and self.device.type == "cuda" and not self.model.backbone.is_vit:
            self.model.to(memory_format=torch.channels_last)
        self.algorithm.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step = 0
        self.seconds = 0.0
        self.skipped_images = 0
        self.last_metrics: dict | None = None
        self.test_outputs: tuple[torch.Tensor, torch.Tensor] | None = None  # latest test logits, labels
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
        unlabeled_batch = cfg.batch_size * self.needs.unlabeled_ratio
        check_resources(self.config, self.data, unlabeled_batch,
                        self.images_per_step // self.dist.world_size, self.device)
        if self.needs.uses_unlabeled:
            self.unlabeled_loader = make_loader(self.data.unlabeled, unlabeled_batch,
                                                cfg.steps_per_epoch, seed + 1, workers, self.device,
                                                self.dist)
        self.saved_step = 0  # the step of the checkpoint on disk
        self.nonfinite_steps = 0
        self.estimating = cfg.estimate != "none" and len(self.data.unlabeled_indices) > 0 \
            and self.data.source is not None
        if self.estimating:  # the same pool images (and calibration views) at every evaluation
            self.estimate_pool = pool_view(self.data.source.train, self.data.unlabeled_indices,
                                           self.data.transforms.test, self.model.backbone.image_size,
                                           cfg.estimate_pool, self.config.seed)
        # read now: a bad file stops the run before its first step, not at its first evaluation
        self.estimate_prior = read_pool_prior(cfg.estimate_prior, self.data.classes) \
            if self.estimating and cfg.estimate_prior else None
        self.last_estimate: Estimate | None = None
        # train.keep best-estimate: the step estimated best so far and its Estimate.as_dict()
        self.best: dict = {"step": 0, "estimate": {}}
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.best_unsaved = False
        shard = list(range(self.dist.rank, len(self.data.test), self.dist.world_size))
        self.test_loader = DataLoader(Subset(self.data.test, shard), batch_size=cfg.eval_batch_size,
                                      num_workers=workers, pin_memory=self.device.type == "cuda")

    @property
    def images_per_step(self) -> int:
        """Images forwarded per optimizer step, over all processes."""
        batch = self.config.train.batch_size
        unlabeled = batch * self.needs.unlabeled_ratio
        return (batch + unlabeled * (1 + self.needs.strong_views)) * self.dist.world_size

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "seconds": self.seconds,
            "skipped_images": self.skipped_images,
            "model": self.model.trainable_state_dict(),
            "algorithm": self.algorithm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best": dict(self.best),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                    "python": random.getstate()},
        }

    def load_state_dict(self, state: dict | None) -> None:
        """Restores a checkpoint; a state that does not fit this run is an error naming it."""
        if state is None:  # a run stopped before its first checkpoint starts at step 0
            return
        where = self.run.path if self.run is not None else "the checkpoint"
        try:
            self.model.load_trainable(state.get("model", {}))
        except AdapterMismatch:
            raise RunDirError(f"run {where} is damaged: its training state does not fit the "
                              "model of its config.yaml (another run's state, or an edited config)") from None
        try:
            self.algorithm.load_state_dict(state["algorithm"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"]["torch"])
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])
            self.step, self.seconds = int(state["step"]), float(state["seconds"])
            self.skipped_images = int(state.get("skipped_images", 0))
            self._restore_best(state.get("best"))
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as error:
            raise RunDirError(f"run {where} is damaged: its training state does not load "
                              f"({str(error).splitlines()[0][:160]})") from None
        self.saved_step = self.step

    def save(self) -> None:
        """Checkpoints the adapter and the state; non-finite weights are never written."""
        bad = [name for name, value in self.model.trainable_state_dict().items()
               if value.is_floating_point() and not bool(torch.isfinite(value).all())]
        if bad:
            self._diverged(f"the weights became non-finite ({bad[0]} holds NaN or inf)")
        if self.run is not None and self.dist.is_main:
            if self.best_unsaved:  # before the state that points to it
                self.run.save_adapter(self.best_weights, self.metadata, self.run.BEST_ADAPTER)
            self.run.save_adapter(self.model.trainable_state_dict(), self.metadata)
            self.run.save_state(self.state_dict())
        self.best_unsaved = False
        self.saved_step = self.step
        self.dist.barrier()

    def _diverged(self, what: str, at_step: int | None = None) -> None:
        cfg = self.config.train
        kept = (f"the run keeps its last good checkpoint (step {self.saved_step}, no final "
                "numbers)" if self.saved_step else "no checkpoint was written")
        raise TrainingDiverged(
            f"training diverged at step {at_step or self.step}: {what}. Nothing of it was saved; {kept}. "
            f"Start a new run with a lower train.lr (now {cfg.lr:g})"
            + ("" if self.precision == "fp32" else f" or train.precision fp32 (now {self.precision})"))

    # ------------------------------------------------------------------ data

    def batches(self, epoch: int, start: int) -> Iterator[Batch]:
        """The batches of one epoch from step ``start`` on, on the device."""
        self.labeled_loader.sampler.set_epoch(epoch, start)
        labeled = iter(self.labeled_loader)
        unlabeled = None
        if self.unlabeled_loader is not None:
            self.unlabeled_loader.sampler.set_epoch(epoch, start)
            unlabeled = iter(self.unlabeled_loader)
        first = epoch * self.config.train.steps_per_epoch + start
        views = self.data.device_views
        for step, (images, labels) in enumerate(labeled, start=first):
            generator = self._generator(step) if views is not None else None
            batch = Batch(self._view(images, generator, False), labels.to(self.device))
            if unlabeled is not None:
                item = next(unlabeled)
                self.skipped_images += int(item["skipped"].sum())
                batch.unlabeled_index = item["index"].to(self.device)
                batch.weak = self._view(item["weak"], generator, False)
                strong = item["strong"] if views is None else [item["weak"]] * views.strong_views
                batch.strong = [self._view(s, generator, True) for s in strong]
                batch.unlabeled_labels = item["label"].to(self.device)
            yield batch

    def _generator(self, step: int) -> torch.Generator:
        generator = torch.Generator(self.device)
        generator.manual_seed(int(np.random.SeedSequence(
            [self.config.seed, self.dist.rank, step]).generate_state(1)[0]))
        return generator

    def _view(self, images: torch.Tensor, generator: torch.Generator | None, strong: bool) -> torch.Tensor:
        """Moves images to the device, augmenting them there with ``data.gpu_augment``."""
        images = images.to(self.device, non_blocking=True)
        views = self.data.device_views
        if views is not None:
            images = (views.strong if strong else views.weak)(images, generator)
        if self.config.train.channels_last and images.dim() == 4 and self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    # ------------------------------------------------------------------ one step

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimizer step over ``train.accumulate`` micro-batches; returns mean logs."""
        self.model.train()
        parts = batch.split(self.config.train.accumulate)
        logs = []
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.net.no_sync()
            with sync:
                with self.autocast():
                    result = self.algorithm.step(self.forward, part)
                self._check_loss(result.logs["loss"])
                self.scaler.scale(result.loss / len(parts)).backward()
            logs.append(result.logs)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        merged = _mean_logs(logs)
        merged["lr"] = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        if self.skipped_images:
            merged["skipped_images"] = float(self.skipped_images)
        return merged

    def _check_loss(self, loss: float) -> None:
        """A non-finite loss stops the run before it reaches the weights; under fp16 the grad
        scaler skips such steps itself, so only a run of them is divergence."""
        if not self.dist.any(not math.isfinite(loss), self.device):  # every process decides alike
            self.nonfinite_steps = 0
            return
        self.nonfinite_steps += 1
        if not self.scaler.is_enabled() or self.nonfinite_steps >= FP16_NONFINITE_STEPS:
            steps = "" if self.nonfinite_steps == 1 else f" for {self.nonfinite_steps} steps in a row"
            value = loss if not math.isfinite(loss) else "non-finite on another process"
            self._diverged(f"the loss is {value}{steps}", at_step=self.step + 1)

    def evaluate(self) -> dict:
        """Test metrics ({} without a test set: then only the estimate says how good it is)."""
        if len(self.data.test) == 0:
            return {}
        logits, labels = predict_logits(self.model, self.test_loader, self.device, self.autocast)
        logits = self.dist.gather_uneven(logits.to(self.device)).cpu()
        labels = self.dist.gather_uneven(labels.to(self.device)).cpu()
        self.test_outputs = (logits, labels)  # the latest, written for reports (train.test_predictions)
        if self.config.train.test_predictions == "every":
            self._save_test_outputs()
        return classification_metrics(logits, labels)

    def _save_test_outputs(self) -> None:
        if self.run is not None and self.dist.is_main and self.test_outputs is not None:
            self.run.save_predictions(*self.test_outputs)

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict:
        cfg = self.config.train
        callbacks = list(self.callbacks) if self.dist.is_main else []
        info = {"num_classes": self.data.num_classes, "num_labeled": len(self.data.labeled),
                "num_unlabeled": len(self.data.unlabeled), "num_test": len(self.data.test)}
        for callback in callbacks:
            callback.on_train_start(cfg.steps, self.step, images_per_step=self.images_per_step,
                                    info=info)
        stop = StopSignals()
        try:
            with stop.installed():
                self._loop(cfg, cfg.eval_every or cfg.steps_per_epoch, callbacks, stop)
        except StopNow:
            where = f" Continue with: finessl train --resume {self.run.path}" if self.run else ""
            raise TrainingInterrupted(
                f"stopped by signal {stop.received[0] if stop.received else ''} during step "
                f"{self.step + 1}; that step was abandoned and the last checkpoint (step "
                f"{self.saved_step}) is kept.{where}") from None
        final = self._final()
        for callback in callbacks:
            callback.on_train_end(final)
        return final

    def _loop(self, cfg: TrainConfig, eval_every: int, callbacks, stop: StopSignals) -> None:
        received = stop.received
        while self.step < cfg.steps:
            epoch, start = divmod(self.step, cfg.steps_per_epoch)
            if start == 0:
                self.algorithm.on_epoch_start(epoch)
            began = time.time()
            for batch in self.batches(epoch, start):
                logs = {**self.train_step(batch), "epoch": epoch}
                self.step += 1
                for callback in callbacks:
                    callback.on_step(self.step, logs)
                end_of_epoch = self.step % cfg.steps_per_epoch == 0
                evaluate = self.step % eval_every == 0 or self.step == cfg.steps
                checkpoint = (end_of_epoch or evaluate or bool(received) or
                              (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0))
                if checkpoint:
                    self.seconds += time.time() - began
                    if evaluate:
                        self._evaluate_and_report(callbacks, epoch)
                    with stop.writing_checkpoint():
                        self.save()
                    began = time.time()
                if received:
                    where = f" Continue with: finessl train --resume {self.run.path}" if self.run else ""
                    raise TrainingInterrupted(
                        f"stopped by signal {received[0]} at step {self.step}; checkpoint saved.{where}")
                if self.step >= cfg.steps or end_of_epoch:
                    break

    def _evaluate_and_report(self, callbacks, epoch: int) -> None:
        metrics = self.evaluate()
        self.last_metrics = metrics
        diagnostics = self.algorithm.diagnostics()
        report = {**metrics, "epoch": epoch}
        found = self._estimate()
        if found is not None:
            report.update(found.as_dict())
        self._track_best(found)
        if diagnostics is not None:
            report["pseudo_labels"] = diagnostics
        for callback in callbacks:
            callback.on_eval(self.step, report)

    # ------------------------------------------------------------------ label-free estimate

    def _estimate(self) -> Estimate | None:
        """``train.estimate`` on the pool subset (main process only: it is not a collective)."""
        self.last_estimate = None
        if not self.estimating or not self.dist.is_main:
            return None
        cfg = self.config.train
        outputs = data_outputs(self.model, self.data, trains_aux_head(self.config.algorithm),
                               self.device, self.model.backbone.image_size, cfg.eval_batch_size,
                               self.config.seed, self.estimate_pool, self.autocast)
        outputs.prior = self.estimate_prior
        self.last_estimate = estimate(outputs, cfg.estimate, seed=self.config.seed,
                                      classes=self.data.classes)
        return self.last_estimate

    def _track_best(self, found: Estimate | None) -> None:
        """``train.keep best-estimate``: the weights of the evaluation estimated best so far
        (every process keeps them; the main one decides and writes them)."""
        if self.config.train.keep != "best-estimate" or not self.estimating:
            return
        best = self.best["estimate"].get("estimated_top1")
        better = found is not None and (best is None or found.top1 > best)
        if not self.dist.any(better, self.device):
            return
        self.best = {"step": self.step, "estimate": found.as_dict() if found else {}}
        self.best_weights = {k: v.detach().to("cpu", copy=True)
                             for k, v in self.model.trainable_state_dict().items()}
        self.best_unsaved = True

    def _restore_best(self, best: dict | None) -> None:
        if not isinstance(best, dict) or not best.get("step"):
            return
        self.best = {"step": int(best["step"]), "estimate": best.get("estimate") or {}}
        if self.config.train.keep == "best-estimate" and self.run is not None:
            weights, _ = self.run.load_adapter(self.run.BEST_ADAPTER)
            try:
                self.model.check_trainable(weights)
            except AdapterMismatch:
                raise self.run.damaged(f"{self.run.BEST_ADAPTER} does not fit the run's model") from None
            self.best_weights = weights

    def _best_lead(self) -> float | None:
        """How many points the best earlier evaluation's estimate beats the last one's by
        (None: the last is the best, or either estimate is missing)."""
        best = self.best["estimate"].get("estimated_top1")
        if self.best_weights is None or self.best["step"] == self.step or best is None \
                or self.last_estimate is None:
            return None
        return float(best) - self.last_estimate.top1

    def _goes_back(self) -> bool:
        """``train.keep best-estimate`` keeps an earlier evaluation only where its estimate
        leads the last one's by more than ``train.keep_margin`` (only the main process
        estimates: its answer is every process's)."""
        if self.config.train.keep != "best-estimate" or self.best_weights is None:
            return False
        lead = self._best_lead()
        return self.dist.any(lead is not None and lead > self.config.train.keep_margin, self.device)

    def _last_kept_reason(self) -> str:
        if self.config.train.keep != "best-estimate":
            return "train.keep last"
        lead = self._best_lead()
        if lead is None:
            return "train.keep best-estimate: the last evaluation had the highest estimated top-1"
        return (f"train.keep best-estimate: step {self.best['step']} was estimated {lead:.2f} points "
                f"above the last, within train.keep_margin ({self.config.train.keep_margin:g})")

    def _final(self) -> dict:
        if self.last_metrics is None:
            self.last_metrics = self.evaluate()
            self._estimate()
        metrics, found, kept = self.last_metrics, self.last_estimate, {}
        if self._goes_back():
            kept["last_top1"] = metrics.get("top1")
            self.model.load_state_dict(self.best_weights, strict=False)
            metrics = self.evaluate()
            if self.run is not None and self.dist.is_main:
                self.run.save_adapter(self.best_weights, self.metadata)
            value = self.best["estimate"].get("estimated_top1")
            kept.update(kept_step=self.best["step"],
                        kept_reason=f"train.keep best-estimate: step {self.best['step']} had the "
                                    "highest estimated top-1"
                                    + (f" ({value:.2f} %)" if value is not None else ""))
        else:
            kept.update(kept_step=self.step, kept_reason=self._last_kept_reason())
        if kept["kept_step"] != self.step:
            found = None  # the kept step's estimate is the best one
            kept.update(self.best["estimate"])
        classes = self.data.classes
        if self.config.train.test_predictions == "final":
            self._save_test_outputs()
        final = {
            "top1": metrics.get("top1"),  # None without a test set
            "balanced_acc": metrics.get("balanced_acc"),
            "ece": metrics.get("ece"),
            "nll": metrics.get("nll"),
            **({"top5": metrics["top5"]} if "top5" in metrics else {}),
            "per_class_acc": dict(zip(classes, metrics["per_class_acc"])) if metrics else {},
            "steps": self.step,
            "seconds": round(self.seconds, 2),
            "trainable_params": self.model.num_trainable_parameters(),
            "algorithm": self.algorithm.name,
            "device": str(self.device),
            "precision": self.precision,
            "world_size": self.dist.world_size,
            "skipped_images": self.skipped_images,
            "epochs": math.ceil(self.step / self.config.train.steps_per_epoch),
            "num_classes": len(classes),
            "num_labeled": len(self.data.labeled),
            "num_unlabeled": len(self.data.unlabeled),
            "num_test": len(self.data.test),
            "test_missing_classes": self.data.test_missing_classes,
            **(found.as_dict() if found is not None else {}),
            **kept,
            **self.notes,
        }
        for warning in final.get("estimate_warnings", []):
            log.warning("the label-free estimate: %s", warning)
        if self.run is not None and self.dist.is_main:
            self.run.write_final(final)
        return final
