"""Cross-fitting: the run's labels held out in turn, so its estimate calibrates on images it
never trained on.

A run memorises its few labeled images (under strong augmentation too), so they cannot say
how often it is right on new ones, and every estimator calibrated on them overrates it.
Cross-fitting trains the run again ``folds`` times with the same configuration and seed,
each time without one fold of its labels (split by class, so every fold keeps each class),
and predicts the left-out images with the fold model that never saw them. Every labeled
image is then predicted once by a model that did not train on it: an honest labeled set,
small (its size is the run's label count) and from slightly weaker models (fewer labels).
``finessl.eval.estimate``'s cross-fitted estimators calibrate on it. The cost is
``folds`` more trainings; the folds live in ``RUN/cross-fit/fold-K`` and resume like any run.
"""

from __future__ import annotations

import copy
import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finessl.config import Config, apply_overrides
from finessl.errors import ConfigError
from finessl.eval.estimate import Estimate, HeldOut, estimate, model_outputs
from finessl.rundir import RunDir, write_json

log = logging.getLogger(__name__)

FOLDS = 2
# What a fold changes in the run's configuration: its labels (data.exclude), nothing kept but
# its last step, one evaluation, no estimate of its own and no event files.
FOLD_SETTINGS = {"train.keep": "last", "train.estimate": "none", "train.tensorboard": "false",
                 "train.loggers": "[]", "train.test_predictions": "off"}


def assign_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold of each labeled image: per class shuffled and dealt round-robin from a
    random start, so folds differ in size by at most one image per class. A class needs
    two labels (each fold keeps one); fewer is refused with the class named."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        if len(rows) < 2:
            raise ConfigError(f"cross-fitting needs at least 2 labels per class: class {int(k)} "
                              "has 1 (label another of its images, or estimate without --cross-fit)")
        fold[rng.permutation(rows)] = (np.arange(len(rows)) + rng.integers(folds)) % folds
    return fold


@dataclass
class CrossFit:
    """The held-out predictions of every fold, and where each fold's run is."""

    held_out: HeldOut
    fold_dirs: list[Path]
    fold_top1: list[float | None]


def fold_config(config: Config, exclude: Path, extra_labels: Path | None) -> Config:
    """The run's configuration with the fold's labels left out (a copy: the run's is kept)."""
    changes = {**FOLD_SETTINGS, "data.exclude": str(exclude),
               "train.eval_every": str(config.train.steps)}
    if extra_labels is not None:
        changes["data.extra_labels"] = str(extra_labels)
    return apply_overrides(copy.deepcopy(config), changes)


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *rows])


def write_fold_lists(folder: Path, k: int, held: np.ndarray, config: Config,
                     data) -> tuple[Path, Path | None]:
    """Fold ``k``'s ``data.exclude`` (its held-out images plus whatever the run excluded)
    and, where the run had ``data.extra_labels``, those labels without the held-out ones
    (an exclusion alone would not remove them: extra labels are added after it)."""
    from finessl.data.extra_labels import item_id

    def name(index: int) -> str:
        return item_id(config.data.name, data.source, index)

    rows = [[name(int(i))] for i in held]
    if config.data.exclude:
        with Path(config.data.exclude).open(newline="", encoding="utf-8-sig") as handle:
            rows += [row[:1] for row in csv.reader(handle) if row]
    exclude = folder / f"fold-{k}-exclude.csv"
    write_rows(exclude, ["path"], rows)
    if not config.data.extra_labels:
        return exclude, None
    out = set(held.tolist())
    extra = folder / f"fold-{k}-extra-labels.csv"
    write_rows(extra, ["path", "label"], [[name(i), data.classes[c]] for i, c in
                                          sorted(data.labeled.labels.items()) if i not in out])
    return exclude, extra


def cross_fit(run_dir: str | Path, folds: int = FOLDS, device: str = "auto",
              pool: Sequence[str | Path] | None = None, loaded: tuple | None = None) -> CrossFit:
    """Trains (or resumes, or reuses) the run's ``folds`` fold runs and predicts each one's
    held-out labels at test transform, and the images an estimate reads (``pool``, or the
    run's estimate subset of its own pool). ``loaded``: the run's ``run_data``, where the
    caller has it already."""
    from finessl.data.ssl_data import LabeledView
    from finessl.hub import local_run
    from finessl.inference import load
    from finessl.run import estimate_images, run_data, train

    if folds < 2:
        raise ConfigError(f"--cross-fit {folds}: cross-fitting needs at least 2 folds")
    run = RunDir(local_run(run_dir))  # a Hub run's folds live in its cache folder
    predictor, data = loaded or run_data(run.path, device)
    config = predictor.config
    labeled = data.labeled_indices
    labels = np.asarray([data.labeled.labels.get(int(i), data.source.train_targets[int(i)])
                         for i in labeled])
    assignment = assign_folds(labels, folds, config.seed)
    images = estimate_images(predictor, data, pool)
    probs, held_labels, confidences, predictions, dirs, top1 = [], [], [], [], [], []
    for k in range(folds):
        folder = run.path / RunDir.CROSS_FIT_FOLDS / f"fold-{k}"
        held = labeled[assignment == k]
        exclude, extra = write_fold_lists(folder.parent, k, held, config, data)
        fold_run = RunDir(folder)
        if not (fold_run / RunDir.FINAL).is_file():
            resume = fold_run.has_state()
            log.info("cross-fitting: %s fold %d of %d (%d labels held out)",
                     "resuming" if resume else "training", k + 1, folds, len(held))
            train(fold_config(config, exclude, extra), fold_run, resume=resume)
        model = load(folder, device)
        view = LabeledView(data.source.train, held, data.transforms.test, data.labeled.labels)
        out = model_outputs(model.model, view, None, model.device,
                            config.train.eval_batch_size, config.seed, with_aux=False)
        whole = model_outputs(model.model, images, None, model.device,
                              config.train.eval_batch_size, config.seed, with_aux=False)
        probs.append(out.pool)
        held_labels.append(labels[assignment == k])
        confidences.append(whole.pool.max(axis=1))
        predictions.append(whole.pool.argmax(axis=1))
        dirs.append(folder)
        top1.append(fold_run.read_final().get("top1"))
    held_out = HeldOut(np.concatenate(probs), np.concatenate(held_labels),
                       np.mean(confidences, axis=0), np.stack(predictions))
    return CrossFit(held_out, dirs, top1)


def cross_fitted_estimate(run_dir: str | Path, folds: int = FOLDS, device: str = "auto",
                          method: str | None = None,
                          pool: Sequence[str | Path] | None = None,
                          pool_prior: str | Path | None = None) -> Estimate:
    """The run's estimate on ``pool`` (default: its own) with ``folds``-fold cross-fitting;
    on its own pool also written to ``RUN/cross_fit.json`` (with the held-out accuracy).
    ``pool_prior``: as for ``finessl.run.estimate``."""
    from finessl.eval import estimate as estimators
    from finessl.hub import local_run
    from finessl.run import loaded_outputs, pool_prior_for, run_data

    run = RunDir(local_run(run_dir))
    loaded = run_data(run.path, device)  # the run's model and data, read once for both
    prior = pool_prior_for(loaded[0], pool, pool_prior)
    fitted = cross_fit(run.path, folds, device, pool, loaded)
    out = loaded_outputs(*loaded, pool)
    out.held_out, out.prior = fitted.held_out, prior
    found = estimate(out, method or estimators.DEFAULT_CROSS_FITTED, seed=loaded[0].config.seed,
                     classes=loaded[0].classes)
    if pool:
        return found
    write_json(run.path / RunDir.CROSS_FIT, {**found.as_dict(), "folds": folds,
                                   "held_out_images": len(fitted.held_out.labels),
                                   "fold_runs": [str(p) for p in fitted.fold_dirs],
                                   "fold_top1": fitted.fold_top1})
    return found
