"""``finessl suggest``: one forward pass of a trained run over a pool, then a strategy.

The pool is a list of files / folders / CSV lists, or by default the run's own unlabeled
pool (minus what is already labeled); images of in-memory datasets are named
``DATASET:INDEX``. Unreadable files are reported and skipped, as in ``predict``. The pass
is written to disk shard by shard (``pool_scores``), so a pool of millions fits.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from finessl.active.pool_scores import PoolChoice, PoolImages, features_in_memory, pool_choice, score_pool
from finessl.active.strategies import STRATEGIES, Pick, Pool
from finessl.data.augment import build_transforms
from finessl.data.ssl_data import build_ssl_data
from finessl.distributed import DistEnv
from finessl.errors import FinesslError
from finessl.hub import local_run
from finessl.inference import Predictor, load
from finessl.pool_pass import SHARD_SIZE, Scorer, ShardStore
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
    classes: list[str] = field(default_factory=list)  # the class names labels are chosen from


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


@contextlib.contextmanager
def shard_folder(folder: Path | None):
    """``folder``, or a temporary one removed afterwards."""
    if folder is not None:
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="finessl-pool-") as tmp:
        yield Path(tmp)


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
    run_dir = local_run(run_dir)  # hf-hub:USER/NAME: into the cache once
    predictor = load(run_dir, device)
    config = predictor.config
    transform = build_transforms(predictor.image_size, predictor.mean, predictor.std).test
    data = build_ssl_data(config.data, predictor.image_size, predictor.mean, predictor.std,
                          config.seed, strong_views=0, check_files=False)
    choice = pool_choice(pool, data, config.data.name, transform, predictor.image_size)
    score = feature_scorer(predictor)
    with shard_folder(folder) as where:
        store = score_pool(score, predictor.device, choice.dataset, where,
                           {"command": "suggest", "pool": choice.fingerprint, "model": predictor.source},
                           batch_size, workers, shard_size, env, progress)
        if not env.is_main:
            return None
        labeled = features_in_memory(score, predictor.device, PoolImages(
            data.source.train, data.labeled_indices, transform, predictor.image_size), batch_size, workers)
        probs = store.rows("probs")
        scores = Pool(probs, store.rows("features"), labeled,
                      latest_margins(RunDir(run_dir), len(predictor.classes)),
                      confident=config.algorithm.threshold)
        picks = choose(scores, budget, np.random.default_rng(seed))
        indices = np.asarray([p.index for p in picks], np.int64)
        predicted = [predictor.classes[int(k)] for k in probs[indices].argmax(axis=1)] if picks else []
        return named_report(store, choice, picks, predicted, strategy, classes=predictor.classes)


def named_report(store: ShardStore, choice: PoolChoice, picks: list[Pick], predicted: list[str],
                 strategy: str, cold_start: bool = False, classes: Sequence[str] = ()) -> SuggestionReport:
    """The picks (indices into the scored rows) with their images' names, and the failures."""
    positions = store.positions()
    report = SuggestionReport(failed=[(choice.name(p), why) for p, why in store.failures()],
                              strategy=strategy, cold_start=cold_start, classes=list(classes))
    for pick, label in zip(picks, predicted):
        position = int(positions[pick.index])
        report.suggestions.append(Suggestion(choice.name(position), label, pick.score, pick.reason,
                                             choice.index(position)))
    for path, reason in report.failed[:20]:
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
