"""Whole-pool inference in bounded memory: shard by shard, on disk, resumable, over ranks.

A pool of N images is cut into shards of ``shard_size`` consecutive images. Each finished
shard is one safetensors file in a work folder (``OUT.parts`` beside the output CSV),
written atomically, so an interrupted command started again skips the shards already
there. Under ``torchrun`` rank r scores the shards ``k`` with ``k % world == r`` and the
main rank merges once every shard is written (the work folder must then be on a file
system all ranks see). What a process holds is one shard's results, whatever N.

The work folder's ``manifest.json`` says which job the shards belong to (command, model
file, the pool's fingerprint, shard size, options); shards of another job are never
mixed in — the command stops and says to remove the folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from finessl.data.path_list import PathList
from finessl.distributed import DistEnv
from finessl.errors import FinesslError
from finessl.rundir import atomic_write

log = logging.getLogger(__name__)

SHARD_SIZE = 10_000
MANIFEST = "manifest.json"

# images [B, 3, S, S] on the device -> named per-image arrays ([B, ...] tensors); an
# optional boolean "finite" entry marks the images whose scores are usable (the others are
# reported as failures, not stored)
Scorer = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def pool_fingerprint(paths: Sequence[str]) -> str:
    """Which images, in which order: equal lists, equal fingerprints."""
    return f"{len(paths)}:{PathList.of(paths).digest()}"


def file_fingerprint(path: Path) -> str:
    """Size and modification time of a model file: a retrained run is another job."""
    stat = Path(path).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


@contextlib.contextmanager
def work_folder(out: str | None, env: DistEnv) -> Iterator[Path]:
    """Where a pass keeps its shards: ``OUT.parts`` beside the output file (kept until the
    output is written, so a second try resumes), or a temporary folder for standard output."""
    if out:
        target = Path(out).expanduser()
        yield target.with_name(target.name + ".parts")
        return
    if env.enabled:
        raise FinesslError("under torchrun give --out FILE: the ranks share their results through "
                           "the FILE.parts folder beside it")
    with tempfile.TemporaryDirectory(prefix="finessl-pass-") as tmp:
        yield Path(tmp) / "parts"


class ForeignShards(FinesslError):
    """The work folder holds another job's shards."""


class ShardStore:
    """The work folder of one pass: a manifest and one safetensors file per finished shard."""

    def __init__(self, folder: Path, total: int, shard_size: int, job: dict) -> None:
        if shard_size < 1:
            raise FinesslError("--shard-size must be at least 1")
        self.folder, self.total, self.shard_size = Path(folder), total, shard_size
        self.job = {**job, "images": total, "shard_size": shard_size}

    @property
    def num_shards(self) -> int:
        return max(1, -(-self.total // self.shard_size))

    def bounds(self, shard: int) -> tuple[int, int]:
        return shard * self.shard_size, min(self.total, (shard + 1) * self.shard_size)

    def path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:06d}.safetensors"

    def done(self, shard: int) -> bool:
        return self.path(shard).is_file()

    def open(self, env: DistEnv) -> int:
        """Creates the folder (main rank), then checks — on every rank, so all stop alike —
        that it holds this job's shards; returns how many shards are already done."""
        manifest = self.folder / MANIFEST
        if env.is_main and not manifest.is_file():
            if any(self.folder.glob("shard-*.safetensors")):
                raise ForeignShards(f"{self.folder} holds shards but no {MANIFEST}, so which job "
                                    "they belong to is unknown; remove the folder to start over")
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise FinesslError(f"cannot create {self.folder}: {error.strerror or error}") from None
            atomic_write(manifest, lambda tmp: tmp.write_text(json.dumps(self.job, indent=1)))
        env.barrier()
        try:
            found = json.loads(manifest.read_text())
        except (OSError, ValueError):
            found = None
        if found is None and not env.is_main:
            raise FinesslError(f"rank {env.rank} cannot read {manifest}: under torchrun --out must "
                               "be on a file system every rank sees")
        if found != self.job:
            raise ForeignShards(f"{self.folder} holds the partial results of another job (another "
                                "model, pool or options); remove the folder to start over, or give "
                                "another --out")
        return sum(self.done(k) for k in range(self.num_shards))

    def todo(self, env: DistEnv) -> list[int]:
        return [k for k in range(self.num_shards) if k % env.world_size == env.rank and not self.done(k)]

    def write(self, shard: int, arrays: dict[str, np.ndarray], failed: list[tuple[int, str]]) -> None:
        from safetensors.numpy import save_file

        meta = {"failed": json.dumps(failed)}
        atomic_write(self.path(shard), lambda tmp: save_file(
            {k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), metadata=meta))

    def read(self, shard: int, names: Sequence[str] | None = None) -> tuple[dict[str, np.ndarray], list]:
        """A finished shard's arrays (all, or ``names``) and its failures ``(position, reason)``."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path(shard)), "numpy") as handle:
                keys = [k for k in handle.keys() if names is None or k in names]
                arrays = {k: handle.get_tensor(k) for k in keys}
                failed = json.loads((handle.metadata() or {}).get("failed", "[]"))
        except (OSError, SafetensorError, ValueError) as error:
            raise FinesslError(f"{self.path(shard)} is damaged ({str(error)[:100]}); remove it and "
                               "run the command again to score that shard anew") from None
        return arrays, [(int(p), str(r)) for p, r in failed]

    def shards(self, names: Sequence[str] | None = None) -> Iterator[tuple[dict[str, np.ndarray], list]]:
        for shard in range(self.num_shards):
            yield self.read(shard, names)

    def failures(self) -> list[tuple[int, str]]:
        return [f for shard in range(self.num_shards) for f in self.read(shard, ["positions"])[1]]

    def positions(self) -> np.ndarray:
        """Pool positions of every scored image, in order (what ``rows`` index)."""
        parts = [arrays["positions"] for arrays, _ in self.shards(["positions"])]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def rows(self, name: str) -> ShardedRows:
        return ShardedRows(self, name)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class ShardedRows:
    """One per-image array of every shard, read as one ``[N, ...]`` array a block at a time
    (``rows[a:b]``, ``rows[index_array]``, ``len``, ``shape``) without holding all of it."""

    def __init__(self, store: ShardStore, name: str) -> None:
        self.store, self.name = store, name
        self.counts, self.files, trailing, self.dtype = [], [], None, None
        from safetensors import safe_open

        for shard in range(store.num_shards):
            with safe_open(str(store.path(shard)), "numpy") as handle:
                if name not in handle.keys():
                    continue
                view = handle.get_slice(name)
                shape = view.get_shape()
                trailing = tuple(shape[1:])
                self.dtype = np.dtype(_NUMPY_TYPES[view.get_dtype()])
                if shape[0]:
                    self.counts.append(shape[0])
                    self.files.append(store.path(shard))
        if trailing is None:
            raise FinesslError("no readable image in the pool")
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.shape = (int(self.starts[-1]), *trailing)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, part: int, start: int, stop: int) -> np.ndarray:
        from safetensors import safe_open

        with safe_open(str(self.files[part]), "numpy") as handle:  # mapped only while read
            return np.array(handle.get_slice(self.name)[start:stop])

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            first = int(np.searchsorted(self.starts, start, side="right")) - 1
            blocks = []
            part = max(first, 0)
            while part < len(self.files) and self.starts[part] < stop:
                lo, hi = max(start, self.starts[part]), min(stop, self.starts[part + 1])
                if hi > lo:
                    blocks.append(self._read(part, int(lo - self.starts[part]), int(hi - self.starts[part])))
                part += 1
            return np.concatenate(blocks) if blocks else np.zeros((0, *self.shape[1:]), self.dtype)
        wanted = np.asarray(index, dtype=np.int64)
        out = np.empty((len(wanted), *self.shape[1:]), self.dtype)
        parts = np.searchsorted(self.starts, wanted, side="right") - 1
        for part in np.unique(parts):  # one read of each shard's span of wanted rows
            chosen = np.flatnonzero(parts == part)
            local = wanted[chosen] - self.starts[part]
            lo, hi = int(local.min()), int(local.max()) + 1
            out[chosen] = self._read(int(part), lo, hi)[local - lo]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[0:len(self)]
        return whole if dtype is None else whole.astype(dtype)


_NUMPY_TYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64", "I32": "int32",
                "U8": "uint8", "BOOL": "bool"}


class _ShardBatches(Sampler[list[int]]):
    """Batches of positions that never straddle two shards, shard after shard."""

    def __init__(self, store: ShardStore, shards: Sequence[int], batch_size: int) -> None:
        self.store, self.shards, self.batch_size = store, list(shards), batch_size

    def __iter__(self):
        for shard in self.shards:
            start, stop = self.store.bounds(shard)
            for first in range(start, stop, self.batch_size):
                yield list(range(first, min(stop, first + self.batch_size)))

    def __len__(self) -> int:
        return sum(-(-(b - a) // self.batch_size) for a, b in map(self.store.bounds, self.shards))


@torch.no_grad()
def score_shards(store: ShardStore, dataset: Dataset, score: Scorer, device: torch.device,
                 env: DistEnv, batch_size: int = 64, workers: int = 0,
                 progress: Callable[[int], None] | None = None) -> None:
    """Opens the store (resuming: finished shards are kept), scores this rank's unfinished
    shards of ``dataset`` (items ``(tensor, position, error)``) and writes each as it
    completes; returns when every rank is done."""
    done = store.open(env)
    if done and env.is_main:
        log.info("resuming: %d of %d shards in %s are already done", done, store.num_shards, store.folder)
    todo = store.todo(env)
    if todo:
        loader = DataLoader(dataset, batch_sampler=_ShardBatches(store, todo, batch_size),
                            num_workers=workers, pin_memory=device.type == "cuda",
                            persistent_workers=False)
        arrays: dict[str, list[np.ndarray]] = {}
        failed: list[tuple[int, str]] = []
        for images, positions, errors in loader:
            shard = int(positions[0]) // store.shard_size
            ok = [i for i, e in enumerate(errors) if not e]
            failed += [(int(positions[i]), errors[i]) for i in range(len(errors)) if errors[i]]
            if ok:
                batch = images[ok].to(device, non_blocking=True)
                if device.type == "cuda":
                    batch = batch.contiguous(memory_format=torch.channels_last)
                scored = score(batch)
                good = scored.pop("finite", None)
                keep = np.arange(len(ok)) if good is None else np.flatnonzero(good.cpu().numpy())
                if good is not None:
                    failed += [(int(positions[ok[i]]), "the model gave non-finite scores")
                               for i in np.flatnonzero(~good.cpu().numpy())]
                arrays.setdefault("positions", []).append(positions[ok].numpy()[keep])
                for name, values in scored.items():
                    arrays.setdefault(name, []).append(values.cpu().numpy()[keep])
            if progress is not None:
                progress(len(errors))
            if int(positions[-1]) + 1 == store.bounds(shard)[1]:  # the shard's last batch
                store.write(shard, {k: np.concatenate(v) for k, v in arrays.items()}
                            if arrays else {"positions": np.zeros(0, np.int64)}, sorted(failed))
                arrays, failed = {}, []
    env.barrier()
    if not env.is_main:  # the main rank reads (and then removes) the shards; the others are done
        return
    missing = [k for k in range(store.num_shards) if not store.done(k)]
    if missing:
        raise FinesslError(f"{len(missing)} shard(s) of {store.folder} were not written (a rank "
                           "stopped early?); run the command again to finish them")
