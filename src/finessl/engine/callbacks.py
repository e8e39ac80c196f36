"""What the training loop reports, and to whom: logs, metrics.jsonl, experiment trackers.

The loop calls every callback at the start, after each step, after each evaluation
(``metrics`` carries ``epoch`` and, where the algorithm has them, its ``pseudo_labels``
diagnostics) and at the end. Only the main process gets callbacks. Trackers whose package
is missing say so in one log line and do nothing.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path

from finessl.registry import Registry
from finessl.rundir import RunDir, open_no_follow

log = logging.getLogger(__name__)

SHOWN_LOGS = ("loss", "mask", "pl_acc", "lr")
EVAL_SCALARS = ("top1", "balanced_acc", "ece", "nll", "top5", "estimated_top1")


class Callback:
    """Hooks the application uses to show progress; the library itself only logs."""

    def on_train_start(self, total_steps: int, start_step: int, images_per_step: int = 0,
                       info: dict | None = None) -> None: ...
    def on_step(self, step: int, logs: dict[str, float]) -> None: ...
    def on_eval(self, step: int, metrics: dict) -> None: ...
    def on_train_end(self, final: dict) -> None: ...


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LogProgress(Callback):
    """Plain log lines every ``every`` steps, with ETA and images/s (files, SLURM, CI)."""

    def __init__(self, every: int = 50) -> None:
        self.every, self.total, self.start_step, self.images = every, 0, 0, 0
        self.began = time.time()

    def on_train_start(self, total_steps: int, start_step: int, images_per_step: int = 0,
                       info: dict | None = None) -> None:
        self.total, self.start_step, self.images = total_steps, start_step, images_per_step
        self.began = time.time()

    def on_step(self, step: int, logs: dict[str, float]) -> None:
        if step % self.every and step != self.total:
            return
        elapsed = time.time() - self.began
        done = step - self.start_step
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else 0.0
        shown = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k in SHOWN_LOGS)
        speed = f" {rate * self.images:.1f} img/s" if self.images else ""
        log.info("step %d/%d %s | %s elapsed, ETA %s,%s", step, self.total, shown,
                 format_duration(elapsed), format_duration(eta), speed)

    def on_eval(self, step: int, metrics: dict) -> None:
        estimate = (f", estimated top1 {metrics['estimated_top1']:.1f} (no labels)"
                    if metrics.get("estimated_top1") is not None else "")
        if metrics.get("top1") is None:
            log.info("eval step %d: no test set%s", step, estimate)
            return
        log.info("eval step %d: top1 %.2f balanced %.2f ece %.4f%s", step, metrics["top1"],
                 metrics["balanced_acc"], metrics["ece"], estimate)


class JsonlLog(Callback):
    """``metrics.jsonl``: a train line every ``every`` steps, an eval line (and the
    pseudo-label diagnostics) at every evaluation. Each record is appended and flushed."""

    def __init__(self, run: RunDir, every: int) -> None:
        self.run, self.every = run, every

    def _write(self, record: dict) -> None:
        self.run.append_metrics(record)

    def on_train_start(self, total_steps: int, start_step: int, images_per_step: int = 0,
                       info: dict | None = None) -> None:
        self._write({"kind": "run", "step": start_step, "total_steps": total_steps,
                     "images_per_step": images_per_step, **(info or {})})

    def on_step(self, step: int, logs: dict[str, float]) -> None:
        if step % self.every == 0:
            self._write({"kind": "train", "step": step, **logs})

    def on_eval(self, step: int, metrics: dict) -> None:
        diagnostics = metrics.get("pseudo_labels")
        scalars = {k: v for k, v in metrics.items() if k not in ("pseudo_labels", "per_class_acc")}
        self._write({"kind": "eval", "step": step, **scalars,
                     "per_class_acc": metrics.get("per_class_acc")})
        if diagnostics is not None:
            self._write({"kind": "pseudo_labels", "step": step, "epoch": metrics.get("epoch"),
                         **diagnostics})


class TensorBoardLog(Callback):
    """Scalars to ``run_dir/tensorboard`` (skipped, with one log line, without tensorboard)."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("tensorboard is not installed (pip install 'finessl[tensorboard]'); "
                     "no event files are written")
            self.writer = None
            return
        self.writer = SummaryWriter(str(folder))

    def on_step(self, step: int, logs: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in logs.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def on_eval(self, step: int, metrics: dict) -> None:
        if self.writer is not None:
            for key in EVAL_SCALARS:
                if key in metrics:
                    self.writer.add_scalar(f"eval/{key}", metrics[key], step)
            self.writer.flush()

    def on_train_end(self, final: dict) -> None:
        if self.writer is not None:
            self.writer.close()


# ``train.loggers``: name -> a tracker made from (run directory, configuration).
LOGGERS: Registry[type[Callback]] = Registry("logger")


@LOGGERS.register("csv")
class CsvLog(Callback):
    """``metrics.csv`` in long form (step, kind, name, value): opens in any spreadsheet."""

    def __init__(self, run: RunDir, config) -> None:
        path = run / RunDir.CSV
        self.path, self.every = path, config.train.log_every
        if not path.exists():
            self._rows([["step", "kind", "name", "value"]])

    def _rows(self, rows) -> None:
        fd = open_no_follow(self.path, os.O_WRONLY | os.O_APPEND, self.path.name)
        with os.fdopen(fd, "a", newline="") as handle:
            csv.writer(handle).writerows(rows)

    def on_step(self, step: int, logs: dict[str, float]) -> None:
        if step % self.every == 0:
            self._rows([step, "train", k, v] for k, v in logs.items())

    def on_eval(self, step: int, metrics: dict) -> None:
        self._rows([step, "eval", k, metrics[k]] for k in EVAL_SCALARS if k in metrics)


@LOGGERS.register("mlflow")
class MLflowLog(Callback):
    """An MLflow run: to ``MLFLOW_TRACKING_URI`` (a server or database) when set, else to
    MLflow's file store in ``run_dir/mlruns`` (which MLflow 3 keeps behind an opt-in,
    ``MLFLOW_ALLOW_FILE_STORE``, set here for that case only)."""

    def __init__(self, run: RunDir, config) -> None:
        every = config.train.log_every
        try:
            import mlflow
        except ImportError:
            log.info("mlflow is not installed (pip install mlflow); train.loggers mlflow is skipped")
            self.mlflow = None
            return
        import os

        self.mlflow, self.every = mlflow, every
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((run.path / RunDir.MLRUNS).resolve().as_uri())
        mlflow.set_experiment("finessl")
        self.active = mlflow.start_run(run_name=run.path.name)
        mlflow.log_params({k: str(v) for k, v in config.to_flat().items()})

    def on_step(self, step: int, logs: dict[str, float]) -> None:
        if self.mlflow is not None and step % self.every == 0:
            self.mlflow.log_metrics({f"train/{k}": v for k, v in logs.items()}, step=step)

    def on_eval(self, step: int, metrics: dict) -> None:
        if self.mlflow is not None:
            self.mlflow.log_metrics({f"eval/{k}": metrics[k] for k in EVAL_SCALARS if k in metrics},
                                    step=step)

    def on_train_end(self, final: dict) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run()


@LOGGERS.register("wandb")
class WandbLog(Callback):
    """A Weights & Biases run in ``run_dir/wandb`` (``WANDB_MODE=offline`` works without an account)."""

    def __init__(self, run: RunDir, config) -> None:
        every = config.train.log_every
        try:
            import wandb
        except ImportError:
            log.info("wandb is not installed (pip install wandb); train.loggers wandb is skipped")
            self.wandb = None
            return
        self.wandb, self.every = wandb, every
        self.active = wandb.init(project="finessl", name=run.path.name, dir=str(run.path),
                                 config=config.to_dict(), reinit=True)

    def on_step(self, step: int, logs: dict[str, float]) -> None:
        if self.wandb is not None and step % self.every == 0:
            self.active.log({f"train/{k}": v for k, v in logs.items()}, step=step)

    def on_eval(self, step: int, metrics: dict) -> None:
        if self.wandb is not None:
            self.active.log({f"eval/{k}": metrics[k] for k in EVAL_SCALARS if k in metrics}, step=step)

    def on_train_end(self, final: dict) -> None:
        if self.wandb is not None:
            self.active.finish()


def run_callbacks(run: RunDir, config) -> list[Callback]:
    """The callbacks every run gets: metrics.jsonl, TensorBoard, and ``train.loggers``."""
    callbacks: list[Callback] = [JsonlLog(run, config.train.log_every)]
    if config.train.tensorboard:
        callbacks.append(TensorBoardLog(run / RunDir.TENSORBOARD))
    return callbacks + [LOGGERS.get(name)(run, config) for name in config.train.loggers]
