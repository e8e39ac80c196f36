"""``finessl suggest``: one forward pass of a trained run over a pool, then a strategy.

The pool is a list of files / folders / CSV lists, or by default the run's own unlabeled
pool (minus what is already labeled); images of in-memory datasets are named
``DATASET:INDEX``. Unreadable files are reported and skipped, as in ``predict``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from finessl.active.strategies import STRATEGIES, Pool
from finessl.data.augment import build_transforms
from finessl.data.extra_labels import item_id
from finessl.data.ssl_data import build_ssl_data
from finessl.errors import FinesslError
from finessl.inference import Predictor, _ImageFiles, collect_images, load
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


@torch.no_grad()
def forward_pool(predictor: Predictor, dataset: Dataset, batch_size: int, workers: int,
                 progress: Callable[[int], None] | None = None):
    """(probabilities, features, keys, failures) over a dataset of ``(tensor, key, error)``."""
    model = predictor.model.eval()
    probs, feats, keys, failed = [], [], [], []
    for images, batch_keys, errors in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
        ok = [i for i, e in enumerate(errors) if not e]
        failed += [(str(k), e) for k, e in zip(batch_keys, errors) if e]
        if ok:
            features = model.features(images[ok].to(predictor.device)).float()
            probs.append(model.head(features).softmax(-1).cpu())
            feats.append(features.cpu().to(torch.float16))  # compact: the strategies chunk
            keys += [batch_keys[i] for i in ok]
        if progress is not None:
            progress(len(errors))
    if not keys:
        raise FinesslError("no readable image in the pool")
    return torch.cat(probs).numpy(), torch.cat(feats).numpy(), keys, failed


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
            device: str = "auto", progress: Callable[[int], None] | None = None) -> SuggestionReport:
    """The ``budget`` images of ``pool`` (default: the run's own unlabeled pool) that should
    be labeled next, best first."""
    choose = STRATEGIES.get(strategy)
    if budget < 1:
        raise FinesslError("--budget must be at least 1")
    predictor = load(run_dir, device)
    config = predictor.config
    transform = build_transforms(predictor.image_size, predictor.mean, predictor.std).test
    data = build_ssl_data(config.data, predictor.image_size, predictor.mean, predictor.std,
                          config.seed, strong_views=0, check_files=False)
    labeled = _PoolImages(data.source.train, data.labeled_indices, transform)
    _, labeled_features, _, _ = forward_pool(predictor, labeled, batch_size, workers)
    if pool:
        files = [str(p) for p in collect_images(pool)]
        dataset: Dataset = _ImageFiles(files, transform, predictor.image_size)
    else:
        own = np.setdiff1d(data.unlabeled_indices, data.labeled_indices)
        if len(own) == 0:
            raise FinesslError("the run's unlabeled pool is empty; give images to choose from")
        dataset = _PoolImages(data.source.train, own, transform)
    probs, features, keys, failed = forward_pool(predictor, dataset, batch_size, workers, progress)
    margins = latest_margins(RunDir(run_dir), len(predictor.classes))
    scores = Pool(probs, features, labeled_features, margins, confident=config.algorithm.threshold)
    picks = choose(scores, budget, np.random.default_rng(seed))
    report = SuggestionReport(failed=failed, strategy=strategy)
    for pick in picks:
        key = keys[pick.index]
        predicted = predictor.classes[int(probs[pick.index].argmax())]
        if pool:
            report.suggestions.append(Suggestion(str(key), predicted, pick.score, pick.reason))
        else:
            index = int(dataset.indices[int(key)])
            name = item_id(config.data.name, data.source, index)
            report.suggestions.append(Suggestion(name, predicted, pick.score, pick.reason, index))
    for path, reason in failed:
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
