"""The run directory: its file names, their formats, and who may write them.

::

  config.yaml                    resolved configuration
  metrics.jsonl                  one JSON object per line ("kind": train / eval / pseudo_labels)
  adapter.safetensors            trainable weights only, with metadata naming the backbone
  state.safetensors              optimizer / schedule / algorithm state / RNG, to resume from
  test_predictions.safetensors   test-set logits and labels of the latest evaluation
  final.json                     final metrics; eval.json: a later re-evaluation
  tensorboard/, report/          event files; the HTML report
  .lock                          held (flock) by the process writing the run

Every file is written atomically (a temporary file in the same folder, then a rename), and
nothing is ever unpickled: tensors live in safetensors files, everything else in JSON, so a
crafted file can at worst fail to load. A damaged file is reported as one line naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
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


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


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
    STATE = "state.safetensors"
    LEGACY_STATE = "state.pt"
    PREDICTIONS = "test_predictions.safetensors"
    FINAL = "final.json"
    EVAL = "eval.json"
    TENSORBOARD = "tensorboard"
    REPORT = "report"
    LOCK = ".lock"
    # What makes a folder "hold a run": a new run may not start over any of these.
    RUN_FILES = (CONFIG, METRICS, ADAPTER, STATE, LEGACY_STATE, PREDICTIONS, FINAL)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ ownership

    def existing_run_files(self) -> list[str]:
        return [name for name in self.RUN_FILES if (self.path / name).exists()]

    def check_can_start(self) -> None:
        """A new run needs a folder without an earlier run's files."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} exists and is not a folder")
        found = self.existing_run_files()
        if found:
            raise RunDirError(f"{self.path} already holds a run ({', '.join(found)}); continue it "
                              f"with --resume {self.path}, or choose another --output")

    def check_can_resume(self) -> None:
        if not (self.path / self.STATE).is_file():
            if (self.path / self.LEGACY_STATE).is_file():
                raise RunDirError(
                    f"{self.path} holds a {self.LEGACY_STATE} from finessl < 0.2: a pickle file, which "
                    "finessl never loads (it could run code). Start a new run.")
            raise RunDirError(f"nothing to resume: {self.path / self.STATE} does not exist")
        if not (self.path / self.CONFIG).is_file():
            raise self.damaged(f"{self.CONFIG} is missing")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive ownership while a process writes the run (``fcntl.flock``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / self.LOCK, "a+")
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

    def _read_safetensors(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        from safetensors import safe_open

        path = self.path / name
        if not path.is_file():
            raise RunDirError(f"{self.path} has no {name}; is the run finished?")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as error:  # safetensors raises its own error types
            raise self.damaged(f"{name} is not a readable safetensors file "
                               f"({str(error).splitlines()[0][:120]})") from None
        return tensors, metadata

    def save_adapter(self, state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
        """Trainable weights only; metadata values are JSON-encoded strings."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        meta = {k: json.dumps(v) for k, v in metadata.items()}
        atomic_write(self.path / self.ADAPTER, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def load_adapter(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, raw = self._read_safetensors(self.ADAPTER)
        try:
            metadata = {k: json.loads(v) for k, v in raw.items()}
        except json.JSONDecodeError:
            raise self.damaged(f"{self.ADAPTER} has unreadable metadata") from None
        for key in ("classes", "num_features", "image_size", "mean", "std"):
            if key not in metadata:
                raise self.damaged(f"{self.ADAPTER} lacks its '{key}' metadata")
        return tensors, metadata

    def save_state(self, state: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        skeleton = json.dumps(pack_state(state, tensors))
        meta = {"format": STATE_FORMAT, "state": skeleton}
        atomic_write(self.path / self.STATE, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def load_state(self) -> dict[str, Any]:
        self.check_can_resume()
        tensors, meta = self._read_safetensors(self.STATE)
        if meta.get("format") != STATE_FORMAT:
            raise self.damaged(f"{self.STATE} is not a finessl training state")
        try:
            state = unpack_state(json.loads(meta["state"]), tensors)
        except (KeyError, TypeError, ValueError) as error:
            raise self.damaged(f"{self.STATE} does not decode ({error})") from None
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise self.damaged(f"{self.STATE} has no step count")
        return state

    def save_predictions(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        from safetensors.torch import save_file

        tensors = {"logits": logits.float().contiguous(), "labels": labels.long().contiguous()}
        atomic_write(self.path / self.PREDICTIONS, lambda tmp: save_file(tensors, str(tmp)))

    def load_predictions(self) -> tuple[torch.Tensor, torch.Tensor]:
        tensors, _ = self._read_safetensors(self.PREDICTIONS)
        logits, labels = tensors.get("logits"), tensors.get("labels")
        if logits is None or labels is None or logits.dim() != 2 or labels.shape != logits.shape[:1]:
            raise self.damaged(f"{self.PREDICTIONS} does not hold logits [N, C] and labels [N]")
        return logits, labels

    # ------------------------------------------------------------------ JSON files

    def write_final(self, final: dict) -> None:
        write_json(self.path / self.FINAL, final)

    def read_final(self) -> dict:
        path = self.path / self.FINAL
        if not path.is_file():
            raise RunDirError(f"{self.path} has no {self.FINAL}; is the run finished?")
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise self.damaged(f"{self.FINAL} is not valid JSON") from None

    # ------------------------------------------------------------------ metrics log

    def read_metrics(self) -> list[dict]:
        """Every complete line of metrics.jsonl; a torn (partly written) line is skipped."""
        path = self.path / self.METRICS
        if not path.is_file():
            raise RunDirError(f"{self.path} has no {self.METRICS}; is it a finessl run directory?")
        records = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def truncate_metrics(self, step: int) -> None:
        """Keeps the lines up to ``step`` (a resumed run rewrites what came after)."""
        path = self.path / self.METRICS
        if not path.is_file():
            return
        kept = [json.dumps(r) for r in self.read_metrics() if int(r.get("step", 0)) <= step]
        atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))

    def open_metrics(self):
        return (self.path / self.METRICS).open("a")
