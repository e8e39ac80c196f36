"""``finessl suggest``: one forward pass of a trained run over a pool, then a strategy.

The pool is a list of files / folders / CSV lists, or by default the run's own unlabeled
pool (minus what is already labeled); images of in-memory datasets are named
``DATASET:INDEX``. Unreadable files are reported and skipped, as in ``predict``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from finessl.active.strategies import STRATEGIES, Pool
from finessl.data.augment import build_transforms
from finessl.data.extra_labels import item_id
from finessl.data.ssl_data import build_ssl_data
from finessl.distributed import DistEnv
from finessl.errors import FinesslError
from finessl.inference import Predictor, collect_images, load
from finessl.pool_pass import SHARD_SIZE, Scorer, ShardStore, pool_fingerprint, score_shards
from finessl.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class Suggestion:
    id: str  # a file path, or DATASET:INDEX
    predicted: str  # the class the image probably belongs to
    score: float
    reason: str
    pool_index: int | None = None  # index into the run's training pool (own pool only)


@dataclass
class SuggestionReport:
    suggestions: list[Suggestion] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    strategy: str = ""
    cold_start: bool = False  # chosen before any model: no predicted class, a label to fill in


class _PoolImages(Dataset):
    """Images of the run's training pool, test-transformed: ``(tensor, position, "")``."""

    def __init__(self, source: Dataset, indices: np.ndarray, transform) -> None:
        self.source, self.indices, self.transform = source, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        image, _ = self.source[int(self.indices[position])]
        return self.transform(image), position, ""


def feature_scorer(predictor: Predictor) -> Scorer:
    """Images -> backbone features (float16: the strategies chunk) and class probabilities."""
    model = predictor.model.eval()

    def score(images: torch.Tensor) -> dict[str, torch.Tensor]:
        with predictor.autocast():
            features = model.features(images).float()
            probs = model.head(features).float().softmax(-1)
        return {"features": features.to(torch.float16), "probs": probs,
                "finite": torch.isfinite(probs).all(dim=-1) & torch.isfinite(features).all(dim=-1)}

    return score


def score_pool(predictor: Predictor, dataset: Dataset, folder: Path, job: dict, batch_size: int,
               workers: int, shard_size: int = SHARD_SIZE, env: DistEnv | None = None,
               progress: Callable[[int], None] | None = None) -> ShardStore:
    """Features and probabilities of a dataset of ``(tensor, position, error)`` in the
    shards of ``folder`` (resumed if a killed run left some), every rank its share."""
    env = env or DistEnv()
    store = ShardStore(folder, len(dataset), shard_size, {**job, "model": predictor.source})
    if store.open(env) and env.is_main:
        log.info("resuming the scoring of the pool from the shards in %s", folder)
    score_shards(store, dataset, feature_scorer(predictor), predictor.device, env, batch_size,
                 workers, progress)
    return store


def labeled_features(predictor: Predictor, dataset: Dataset, batch_size: int, workers: int) -> np.ndarray:
    """Features of the (small) labeled set, in memory."""
    with tempfile.TemporaryDirectory(prefix="finessl-labeled-") as tmp:
        store = score_pool(predictor, dataset, Path(tmp), {"labeled": True}, batch_size, workers)
        return np.asarray(store.rows("features")) if store.positions().size else \
            np.zeros((0, 1), np.float16)


def latest_margins(run: RunDir, num_classes: int) -> np.ndarray | None:
    """The balanced margins FineSSL logged at its last evaluation, if any."""
    if not (run / RunDir.METRICS).is_file():
        return None
    records = run.read_metrics()  # damaged lines are an error, as everywhere
    margins = [r["margins"] for r in records if r.get("kind") == "pseudo_labels" and r.get("margins")]
    if not margins:
        return None
    if len(margins[-1]) != num_classes or any(m is None for m in margins[-1]):
        raise run.damaged(f"{RunDir.METRICS} logs {len(margins[-1])} margins for {num_classes} classes")
    return np.asarray(margins[-1], dtype=float)


def suggest(run_dir: str | Path, budget: int, pool: Sequence[str | Path] | None = None,
            strategy: str = "auto", seed: int = 0, batch_size: int = 64, workers: int = 0,
            device: str = "auto", progress: Callable[[int], None] | None = None,
            folder: Path | None = None, shard_size: int = SHARD_SIZE,
            env: DistEnv | None = None) -> SuggestionReport | None:
    """The ``budget`` images of ``pool`` (default: the run's own unlabeled pool) that should
    be labeled next, best first.

    The pool's features and probabilities go to the shards of ``folder`` (default: a
    temporary folder) as they are computed — resumed if a killed run left some there — and
    the strategies read them back in blocks. Under torchrun every rank scores its share and
    the main rank chooses (the others get None)."""
    env = env or DistEnv()
    choose = STRATEGIES.get(strategy)
    if budget < 1:
        raise FinesslError("--budget must be at least 1")
    predictor = load(run_dir, device)
    config = predictor.config
    transform = build_transforms(predictor.image_size, predictor.mean, predictor.std).test
    data = build_ssl_data(config.data, predictor.image_size, predictor.mean, predictor.std,
                          config.seed, strong_views=0, check_files=False)
    if pool:
        files = collect_images(pool)
        dataset: Dataset = predictor.files(files)
        job = {"command": "suggest", "pool": pool_fingerprint(files)}
    else:
        own = np.setdiff1d(data.unlabeled_indices, data.labeled_indices)
        if len(own) == 0:
            raise FinesslError("the run's unlabeled pool is empty; give images to choose from")
        dataset = _PoolImages(data.source.train, own, transform)
        job = {"command": "suggest", "pool": f"own {len(own)} {hash_indices(own)}"}
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="finessl-suggest-")))
        store = score_pool(predictor, dataset, folder, job, batch_size, workers, shard_size, env,
                           progress)
        if not env.is_main:
            return None
        known = labeled_features(predictor, _PoolImages(data.source.train, data.labeled_indices,
                                                        transform), batch_size, workers)
        margins = latest_margins(RunDir(run_dir), len(predictor.classes))
        return _choose(store, known, margins, predictor, budget, choose, strategy, seed,
                       files if pool else None, dataset, data)


def hash_indices(indices: np.ndarray) -> str:
    return hashlib.blake2b(np.asarray(indices, np.int64).tobytes(), digest_size=16).hexdigest()


def _choose(store: ShardStore, known: np.ndarray, margins: np.ndarray | None, predictor: Predictor,
            budget: int, choose, strategy: str, seed: int, files, dataset, data) -> SuggestionReport:
    """Runs the strategy over the scored shards and names the picks."""
    config = predictor.config
    positions = store.positions()
    names = (lambda position: files[position]) if files is not None else \
        (lambda position: item_id(config.data.name, data.source, int(dataset.indices[position])))
    failed = [(names(p), reason) for p, reason in store.failures()]
    if not len(positions):
        raise FinesslError("no readable image in the pool")
    probs = store.rows("probs")
    scores = Pool(probs, store.rows("features"), known if len(known) else None, margins,
                  confident=config.algorithm.threshold)
    picks = choose(scores, budget, np.random.default_rng(seed))
    predicted = probs[np.asarray([p.index for p in picks], np.int64)].argmax(axis=1) if picks else []
    report = SuggestionReport(failed=failed, strategy=strategy)
    for pick, k in zip(picks, predicted):
        position = int(positions[pick.index])
        index = None if files is not None else int(dataset.indices[position])
        report.suggestions.append(Suggestion(names(position), predictor.classes[int(k)], pick.score,
                                             pick.reason, index))
    for path, reason in failed[:20]:
        log.warning("skipped %s: %s", path, reason)
    return report


def write_suggestions(report: SuggestionReport, handle) -> None:
    """``path, predicted, score, reason, strategy`` rows; the second column is what
    ``data.extra_labels`` reads as the label (correct it), empty in a cold start (fill it in)."""
    writer = csv.writer(handle)
    writer.writerow(["path", "label" if report.cold_start else "predicted", "score", "reason",
                     "strategy"])
    for s in report.suggestions:
        writer.writerow([s.id, s.predicted, f"{s.score:.6f}", s.reason, report.strategy])
