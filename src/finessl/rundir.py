"""The run directory: its file names, their formats, and who may write them.

::

  config.yaml                    resolved configuration
  metrics.jsonl                  one JSON object per line ("kind": train / eval / pseudo_labels)
  adapter.safetensors            trainable weights only, with metadata naming the backbone
  state.safetensors              optimizer / schedule / algorithm state / RNG, to resume from
  test_predictions.safetensors   test-set logits (float16) and labels of the final model
  README.md                      the model card (Hugging Face front matter, results, use)
  final.json                     final metrics; eval.json: a later re-evaluation
  tensorboard/, report/          event files; the HTML report
  metrics.csv, mlruns/, wandb/   the optional trackers (train.loggers)
  .lock                          held (flock) by the process writing the run

Every file is written atomically (a temporary file in the same folder, then a rename) or,
for the two append-only files (metrics.jsonl, .lock), opened without following links; a
run directory that holds symbolic links is refused, so nothing a run writes lands outside
it. Nothing is ever unpickled: tensors live in safetensors files, everything else in
strict JSON (no NaN), so a crafted file can at worst fail to load. A damaged file is
reported as one line naming it.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finessl.errors import FinesslError

STATE_FORMAT = "finessl-state-1"


class RunDirError(FinesslError):
    """The run directory is in use, in the wrong state, or damaged."""


# --------------------------------------------------------------------------- atomic files


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


def finite_json(data: Any) -> Any:
    """``data`` with every NaN / infinity replaced by None: what strict JSON can hold."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    return data


def dumps(data: Any, **kwargs) -> str:
    """Strict JSON (non-finite numbers become null), as every file of a run is written."""
    return json.dumps(finite_json(data), allow_nan=False, **kwargs)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(dumps(data, indent=2) + "\n"))


def open_no_follow(path: Path, flags: int, what: str):
    """Opens ``path`` for writing without following a symbolic link at its end."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise RunDirError(f"{path} is a symbolic link; {what} is never written through a "
                              "link (remove it)") from None
        raise
    return fd


# --------------------------------------------------------------------------- state codec


def pack_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested state -> JSON-able skeleton; tensors move to ``tensors`` under generated keys.

    Allowed: dict, list, tuple, str, int, float, bool, None, torch tensors, numpy arrays."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").clone().contiguous()
        return {"$tensor": key}
    if isinstance(obj, np.ndarray):
        return {"$array": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"$tuple": [pack_state(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [pack_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: pack_state(v, tensors) for k, v in obj.items()}
        return {"$items": [[pack_state(k, tensors), pack_state(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a run state")


def unpack_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``pack_state``; only builds the allowed types."""
    if isinstance(obj, list):
        return [unpack_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "$tensor" in obj:
        return tensors[obj["$tensor"]]
    if "$array" in obj:
        return np.asarray(obj["$array"], dtype=np.dtype(obj["dtype"]))
    if "$tuple" in obj:
        return tuple(unpack_state(v, tensors) for v in obj["$tuple"])
    if "$items" in obj:
        return {_hashable(unpack_state(k, tensors)): unpack_state(v, tensors) for k, v in obj["$items"]}
    return {k: unpack_state(v, tensors) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


# --------------------------------------------------------------------------- the directory


class RunDir:
    """One run's folder. Every name a run writes is here, and every read is checked."""

    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    ADAPTER = "adapter.safetensors"
    BEST_ADAPTER = "best_adapter.safetensors"  # train.keep best-estimate: the best so far
    STATE = "state.safetensors"
    LEGACY_STATE = "state.pt"
    PREDICTIONS = "test_predictions.safetensors"
    FINAL = "final.json"
    EVAL = "eval.json"
    TENSORBOARD = "tensorboard"
    REPORT = "report"
    CSV = "metrics.csv"
    OOD_EXCLUDED = "ood_excluded.csv"
    AUDIT = "audit"  # finessl audit --run: its files are named in finessl.audit.output
    AUDIT_SUMMARY = "audit.json"  # inside AUDIT
    CROSS_FIT = "cross_fit.json"  # finessl estimate --cross-fit: the cross-fitted estimate
    CROSS_FIT_FOLDS = "cross-fit"  # ... and its fold runs, fold-0, fold-1, ...
    CARD = "README.md"  # the model card (a user's own README.md is left alone)
    MLRUNS = "mlruns"
    WANDB = "wandb"
    LOCK = ".lock"
    # What makes a folder "hold a run": a new run may not start over any file a run writes.
    RUN_FILES = (CONFIG, METRICS, ADAPTER, BEST_ADAPTER, STATE, LEGACY_STATE, PREDICTIONS, FINAL, EVAL,
                 TENSORBOARD, REPORT, CSV, OOD_EXCLUDED, MLRUNS, WANDB)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._resumed = None  # the run's config, once resume_config has checked and read it

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ ownership

    def existing_run_files(self) -> list[str]:
        return [name for name in self.RUN_FILES if os.path.lexists(self.path / name)]

    # The names that must be plain files wherever they exist.
    FILES = (CONFIG, METRICS, ADAPTER, BEST_ADAPTER, STATE, PREDICTIONS, FINAL, EVAL, CSV, OOD_EXCLUDED, LOCK)

    def check_no_links(self) -> None:
        """A run writes only inside its folder: a folder holding symbolic links (or a folder
        where one of its files should be) is refused."""
        if not self.path.is_dir():
            return
        for name in self.FILES:
            path = self.path / name
            if path.exists() and not path.is_symlink() and not path.is_file():
                raise self.damaged(f"{name} is not a file")
        for folder, dirs, files in os.walk(self.path):
            for name in dirs + files:
                if os.path.islink(os.path.join(folder, name)):
                    raise RunDirError(
                        f"{os.path.join(folder, name)} is a symbolic link; a run directory may not "
                        "hold links (finessl would write through them). Remove it.")

    def check_can_start(self) -> None:
        """A new run needs a folder without an earlier run's files."""
        if os.path.islink(self.path) and not self.path.exists():
            raise RunDirError(f"{self.path} is a symbolic link to a folder that does not exist")
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} exists and is not a folder")
        found = self.existing_run_files()
        if found:
            hint = (f"it stopped before its first checkpoint: restart it with --resume {self.path}"
                    if self.never_checkpointed() else f"continue it with --resume {self.path}")
            raise RunDirError(f"{self.path} already holds a run ({', '.join(found)}); {hint}, or "
                              "choose another --output")
        self.check_no_links()

    def never_checkpointed(self) -> bool:
        """A run that was stopped (killed) before it wrote its first checkpoint."""
        return ((self.path / self.CONFIG).is_file() and not (self.path / self.STATE).exists()
                and not (self.path / self.ADAPTER).exists() and not (self.path / self.FINAL).exists())

    def has_state(self) -> bool:
        return (self.path / self.STATE).is_file()

    def resume_config(self):
        """The configuration of the run to continue: checked (``check_can_resume``) and read
        once per RunDir, however many parts of a resume ask; each caller gets its own copy."""
        if self._resumed is None:
            self.check_can_resume()
            self._resumed = self.read_config()
        return copy.deepcopy(self._resumed)

    def check_can_resume(self) -> None:
        """A run with a checkpoint, or one stopped before its first (it restarts at step 0)."""
        if not (self.path / self.STATE).is_file():
            if (self.path / self.LEGACY_STATE).is_file():
                raise RunDirError(
                    f"{self.path} holds a {self.LEGACY_STATE} from finessl < 0.2: a pickle file, which "
                    "finessl never loads (it could run code). Start a new run.")
            if not self.never_checkpointed():
                raise RunDirError(f"nothing to resume: {self.path / self.STATE} does not exist")
        if not (self.path / self.CONFIG).is_file():
            raise self.damaged(f"{self.CONFIG} is missing")
        self.check_no_links()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive ownership while a process writes the run (``fcntl.flock``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.fdopen(open_no_follow(self.path / self.LOCK, os.O_RDWR, "the lock"), "r+")
        except IsADirectoryError:
            raise self.damaged(f"{self.LOCK} is not a file") from None
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunDirError(f"{self.path} is in use by process {holder}; wait for it to "
                                  "finish or stop it") from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            handle.close()  # releases the lock

    def damaged(self, what: str) -> RunDirError:
        return RunDirError(f"run {self.path} is damaged: {what}")

    # ------------------------------------------------------------------ config

    def write_config(self, config) -> None:
        atomic_write(self.path / self.CONFIG, lambda tmp: tmp.write_text(config.to_yaml()))

    def read_config(self):
        from finessl.config import load_config
        from finessl.errors import ConfigError

        path = self.path / self.CONFIG
        if not path.is_file():
            raise RunDirError(f"{self.path} is not a finessl run: {self.CONFIG} is missing")
        try:
            return load_config(path)
        except ConfigError as error:
            raise self.damaged(f"{self.CONFIG}: {error}") from None

    # ------------------------------------------------------------------ tensors

    def _read_safetensors(self, name: str, tensors_too: bool = True
                          ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        from safetensors import safe_open

        path = self.path / name
        if not path.is_file():
            raise RunDirError(f"{self.path} has no {name}; is the run finished?")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                keys = list(handle.keys()) if tensors_too else []
                tensors = {key: handle.get_tensor(key) for key in keys}
        except Exception as error:  # safetensors raises its own error types
            raise self.damaged(f"{name} is not a readable safetensors file "
                               f"({str(error).splitlines()[0][:120]})") from None
        return tensors, metadata

    def save_adapter(self, state: dict[str, torch.Tensor], metadata: dict[str, Any],
                     name: str = ADAPTER) -> None:
        """Trainable weights only; metadata values are JSON-encoded strings."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        meta = {k: json.dumps(v) for k, v in metadata.items()}
        atomic_write(self.path / name, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def load_adapter(self, name: str = ADAPTER) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The trained weights and their metadata, both checked: a non-finite weight (a run
        that diverged) or metadata of the wrong type or range is damage, never loaded."""
        tensors, raw = self._read_safetensors(name)
        metadata = self._adapter_metadata(raw)
        for key, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise self.damaged(f"{name} holds non-finite weights ({key} has NaN or "
                                   "inf): the run diverged; train again with a lower train.lr")
        return tensors, metadata

    def read_adapter_metadata(self) -> dict[str, Any]:
        """The adapter's metadata only (for reports), checked like ``load_adapter``'s."""
        return self._adapter_metadata(self._read_safetensors(self.ADAPTER, tensors_too=False)[1])

    def _adapter_metadata(self, raw: dict[str, str]) -> dict[str, Any]:
        try:
            metadata = {k: json.loads(v) for k, v in raw.items()}
        except json.JSONDecodeError:
            raise self.damaged(f"{self.ADAPTER} has unreadable metadata") from None
        for key in ("classes", "num_features", "image_size", "mean", "std"):
            if key not in metadata:
                raise self.damaged(f"{self.ADAPTER} lacks its '{key}' metadata")
        problem = adapter_metadata_problem(metadata)
        if problem:
            raise self.damaged(f"{self.ADAPTER} metadata: {problem}")
        return metadata

    def save_state(self, state: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        skeleton = json.dumps(pack_state(state, tensors))
        meta = {"format": STATE_FORMAT, "state": skeleton}
        atomic_write(self.path / self.STATE, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def load_state(self) -> dict[str, Any]:
        if self._resumed is None:  # resume_config checked it already
            self.check_can_resume()
        tensors, meta = self._read_safetensors(self.STATE)
        if meta.get("format") != STATE_FORMAT:
            raise self.damaged(f"{self.STATE} is not a finessl training state")
        try:
            state = unpack_state(json.loads(meta["state"]), tensors)
        except (KeyError, TypeError, ValueError) as error:
            raise self.damaged(f"{self.STATE} does not decode ({error})") from None
        step = state.get("step") if isinstance(state, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= 2**53:
            raise self.damaged(f"{self.STATE} has no step count")
        return state

    def save_predictions(self, logits: torch.Tensor, labels: torch.Tensor) -> None:  # noqa: D102
        from safetensors.torch import save_file

        half = torch.finfo(torch.float16).max  # float16 halves the file; logits never need more range
        tensors = {"logits": logits.float().clamp(-half, half).half().contiguous(),
                   "labels": labels.long().contiguous()}
        atomic_write(self.path / self.PREDICTIONS, lambda tmp: save_file(tensors, str(tmp)))

    def load_predictions(self) -> tuple[torch.Tensor, torch.Tensor]:
        tensors, _ = self._read_safetensors(self.PREDICTIONS)
        logits, labels = tensors.get("logits"), tensors.get("labels")
        if (logits is None or labels is None or logits.dim() != 2 or labels.shape != logits.shape[:1]
                or not logits.is_floating_point() or labels.is_floating_point()):
            raise self.damaged(f"{self.PREDICTIONS} does not hold logits [N, C] and labels [N]")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
            raise self.damaged(f"{self.PREDICTIONS} has labels outside the {logits.shape[1]} classes")
        if not bool(torch.isfinite(logits).all()):
            raise self.damaged(f"{self.PREDICTIONS} holds non-finite logits")
        return logits.float(), labels.long()

    # ------------------------------------------------------------------ JSON files

    def write_final(self, final: dict) -> None:
        write_json(self.path / self.FINAL, final)

    def read_final(self) -> dict:
        path = self.path / self.FINAL
        if not path.is_file():
            raise RunDirError(f"{self.path} has no {self.FINAL}; is the run finished?")
        final = self._read_json(self.FINAL)
        problem = record_problem(final)
        if problem:
            raise self.damaged(f"{self.FINAL}: {problem}")
        return final

    def read_cross_fit(self) -> dict | None:
        """``finessl estimate --cross-fit``'s result (None: the run was not cross-fitted)."""
        return self._read_json(self.CROSS_FIT) if (self.path / self.CROSS_FIT).is_file() else None

    def _read_json(self, name: str) -> Any:
        path = self.path / name
        if path.stat().st_size > MAX_JSON_BYTES:
            raise self.damaged(f"{name} is {path.stat().st_size:,} bytes, far more than it can hold")
        try:
            return json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError):
            raise self.damaged(f"{name} is not valid JSON") from None

    # ------------------------------------------------------------------ the pool filter

    def write_ood_excluded(self, rows: list[tuple[int, str, float]]) -> None:
        """``algorithm.ood``'s dropped images: (source index, name, score) rows."""
        import csv

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["index", "image", "ood_score"])
                writer.writerows([index, name, f"{score:.6f}"] for index, name, score in rows)

        atomic_write(self.path / self.OOD_EXCLUDED, write)

    def read_ood_excluded(self) -> np.ndarray | None:
        """The source indices a run's ``algorithm.ood`` dropped (None: the file is absent)."""
        import csv

        path = self.path / self.OOD_EXCLUDED
        if not path.is_file():
            return None
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))[1:]
            indices = np.asarray([int(row[0]) for row in rows], dtype=np.int64)
        except (ValueError, IndexError, UnicodeDecodeError, csv.Error):
            raise self.damaged(f"{self.OOD_EXCLUDED} is not a list of image indices") from None
        if len(indices) and indices.min() < 0:
            raise self.damaged(f"{self.OOD_EXCLUDED} names images outside the training pool")
        return indices

    # ------------------------------------------------------------------ metrics log

    def read_metrics(self) -> list[dict]:
        """Every complete line of metrics.jsonl; a torn (partly written) line is skipped."""
        path = self.path / self.METRICS
        if not path.is_file():
            raise RunDirError(f"{self.path} has no {self.METRICS}; is it a finessl run directory?")
        records = []
        lines = path.read_text(errors="replace").splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line, parse_constant=_no_constant)
            except (json.JSONDecodeError, ValueError, RecursionError):
                if number == len(lines):
                    continue  # the torn last line of a killed run
                raise self.damaged(f"{self.METRICS} line {number} is not JSON") from None
            problem = record_problem(record, needs_step=True)
            if problem:
                raise self.damaged(f"{self.METRICS} line {number}: {problem}")
            records.append(record)
        return records

    def truncate_metrics(self, step: int) -> None:
        """Keeps the lines up to ``step`` (a resumed run rewrites what came after)."""
        path = self.path / self.METRICS
        if not path.is_file():
            return
        kept = [dumps(r) for r in self.read_metrics() if r["step"] <= step]
        atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))

    def append_metrics(self, record: dict) -> None:
        """Appends one strict-JSON line (never through a link)."""
        fd = open_no_follow(self.path / self.METRICS, os.O_WRONLY | os.O_APPEND, self.METRICS)
        with os.fdopen(fd, "a") as handle:
            handle.write(dumps(record) + "\n")


# --------------------------------------------------------------------------- checks of read files

MAX_JSON_BYTES = 256 << 20


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not strict JSON")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plain(value: Any, depth: int = 0) -> bool:
    """Numbers, strings, booleans, None, and lists / string-keyed dicts of them."""
    if value is None or isinstance(value, (str, bool)) or _is_number(value):
        return True
    if depth > 3:
        return False
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


# Keys whose values readers use as numbers, and those they use as per-class lists / maps.
NUMERIC_KEYS = ("top1", "balanced_acc", "ece", "nll", "top5", "seconds", "trainable_params",
                "num_classes", "num_labeled", "num_unlabeled", "num_test", "skipped_images", "epochs",
                "loss", "lr", "mask", "estimated_top1", "last_top1", "kept_step")
PER_CLASS_KEYS = ("per_class_acc", "pl_counts", "pl_class_acc", "margins", "estimated_top1_interval",
                  "estimates")


def record_problem(record: Any, needs_step: bool = False) -> str | None:
    """What is wrong with a final.json / metrics.jsonl record, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if needs_step and (not isinstance(record.get("step"), int) or isinstance(record.get("step"), bool)
                       or record["step"] < 0):
        return "no step count"
    if "steps" in record and (not isinstance(record["steps"], int) or record["steps"] < 0):
        return "steps is not a count"
    if needs_step and not isinstance(record.get("kind"), str):
        return "no kind"
    if not _plain(record):
        return "holds values of the wrong type"
    for key in NUMERIC_KEYS:
        if record.get(key) is not None and not _is_number(record[key]):
            return f"{key} is not a number"
    for key in PER_CLASS_KEYS:
        value = record.get(key)
        items = list(value.values()) if isinstance(value, dict) else value
        if value is not None and (not isinstance(items, list) or
                                  not all(v is None or _is_number(v) for v in items)):
            return f"{key} is not a list of numbers"
    return None


def adapter_metadata_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with an adapter's metadata (types and possible values), or None."""
    classes = meta.get("classes")
    if (not isinstance(classes, list) or not classes or
            not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes)):
        return "'classes' is not a list of distinct class names"
    for key, low, high in (("num_features", 1, 1 << 20), ("image_size", 8, 1 << 14)):
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            return f"'{key}' is not a whole number in [{low}, {high}]"
    for key, low in (("mean", -10.0), ("std", 1e-6)):
        value = meta.get(key)
        if (not isinstance(value, list) or len(value) != 3 or not all(_is_number(v) for v in value)
                or not all(low <= v <= 10 for v in value)):
            return f"'{key}' is not three numbers in range"
    for key in ("backbone", "pretrained", "peft", "activation", "format"):
        if key in meta and not isinstance(meta[key], str):
            return f"'{key}' is not a string"
    if "init_seed" in meta and (not isinstance(meta["init_seed"], int) or meta["init_seed"] < 0):
        return "'init_seed' is not a seed"
    if "frozen_fingerprint" in meta and not (meta["frozen_fingerprint"] is None or
                                             _is_number(meta["frozen_fingerprint"])):
        return "'frozen_fingerprint' is not a number"
    if "user_backbone" in meta and not isinstance(meta["user_backbone"], bool):
        return "'user_backbone' is not true or false"
    return None
