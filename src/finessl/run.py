"""High-level API: train a run, resume it, distill it, evaluate it.

Training owns its run directory (``finessl.rundir``): a new run refuses a folder that holds
an earlier run; ``resume`` continues only the run whose state is there, with only engine
settings changed; everything is validated and built before the first file is written, and
a lock keeps a second process out.
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from finessl.audit.pool_filter import PoolFilter
from finessl.builder import as_config, build_run, build_test_set
from finessl.config import Config, apply_overrides
from finessl.data.augment import Transforms
from finessl.data.datasets import SourceData
from finessl.device import autocast_for, resolve_device, resolve_precision
from finessl.distributed import init_distributed
from finessl.engine.callbacks import Callback, LogProgress, run_callbacks
from finessl.engine.trainer import Trainer
from finessl.errors import ConfigError, FinesslError, TrainingInterrupted
from finessl.eval.metrics import classification_metrics, predict_logits
from finessl.models import build_backbone
from finessl.rundir import RunDir, write_json

log = logging.getLogger(__name__)

# Keys a resumed run may change: where and how it runs, not what it learns.
RESUMABLE_CHANGES = (
    "train.steps", "train.eval_every", "train.checkpoint_every", "train.log_every",
    "train.tensorboard", "train.loggers", "train.eval_batch_size", "train.device",
    "train.compile", "data.num_workers", "data.root", "data.download", "model.cache_dir",
    "description",
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_resume_changes(saved: Config, config: Config, run: RunDir) -> None:
    """A resumed run may change engine settings only; anything else would not fit its state."""
    before, after = saved.to_flat(), config.to_flat()
    changed = [k for k in after if before.get(k) != after[k] and k not in RESUMABLE_CHANGES]
    if changed:
        key = changed[0]
        raise ConfigError(f"--resume {run.path}: {key} cannot change on resume (was "
                          f"{before.get(key)!r}, now {after[key]!r}); start a new run instead")


def train(
    config: Config | str | Path | dict,
    output: str | Path | RunDir,
    *,
    backbone: nn.Module | None = None,
    source: SourceData | None = None,
    transforms: Transforms | None = None,
    callbacks: Sequence[Callback] | None = None,
    resume: bool = False,
) -> dict:
    """Trains one run and returns its final metrics.

    ``config``: a Config, a preset name, a YAML path or a nested dict. ``backbone``: any
    module mapping a batch to ``[N, D]`` features (defaults to ``config.model``).
    ``source``: your own images/labels (see ``SourceData``); ``transforms``: your own
    ``Transforms`` (weak / strong / test), e.g. for non-image data. ``resume``: continue
    the run in ``output`` from its last checkpoint (a ``RunDir`` whose ``resume_config``
    was read already is not read again).
    """
    config = as_config(config)
    run = output if isinstance(output, RunDir) else RunDir(output)
    if resume:
        check_resume_changes(run.resume_config(), config, run)
    else:
        run.check_can_start()
    dist = init_distributed(resolve_device(config.train.device).type)
    seed_everything(config.seed)
    dropped = run.read_ood_excluded() if resume and config.algorithm.ood != "none" else None
    pieces = build_run(config, backbone=backbone, source=source, transforms=transforms, dist=dist,
                       pool_filter=None if dropped is None else
                       PoolFilter(dropped, np.zeros(len(dropped)), float("nan")))
    shown = list(callbacks) if callbacks is not None else [LogProgress(config.train.log_every)]
    trainer = Trainer(config, pieces.model, pieces.algorithm, pieces.data, run, metadata=pieces.metadata,
                      dist=dist)
    if pieces.pool_filter is not None:
        trainer.notes["ood_dropped"] = len(pieces.pool_filter.excluded)
    if resume:  # checked before anything is written; no state: stopped before its first checkpoint
        trainer.load_state_dict(run.load_state() if run.has_state() else None)
    log.info("%s %s: %d labeled, %d unlabeled, %d test images, %d classes, %d trainable "
             "parameters", "resuming" if resume else "training", config.algorithm.name,
             len(pieces.data.labeled), len(pieces.data.unlabeled), len(pieces.data.test),
             pieces.data.num_classes, pieces.model.num_trainable_parameters())
    missing = pieces.data.test_missing_classes
    if missing:
        log.warning("the test set has no images of %d class(es) (%s): their accuracy is not "
                    "measured and top-1 covers the other classes only (final.json: "
                    "test_missing_classes)", len(missing), ", ".join(missing[:10]))
    created = not run.path.exists()
    dist.barrier()  # every process has validated before the main one writes
    try:
        with run.lock() if dist.is_main else contextlib.nullcontext():
            if dist.is_main:
                if resume:
                    run.truncate_metrics(trainer.step)
                else:
                    run.check_can_start()  # again, now that we hold the lock
                    _write_pool_filter(run, pieces)
                run.write_config(config)
                shown += run_callbacks(run, config)
            trainer.callbacks = shown
            final = trainer.fit()
            if dist.is_main:
                _card(run)
            return final
    except BaseException as error:
        # A start that fails before the first checkpoint leaves no half-made run behind.
        failed_start = not isinstance(error, TrainingInterrupted) and not (run / RunDir.STATE).exists()
        if created and failed_start and dist.is_main and run.path.is_dir():
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def _card(run: RunDir) -> None:
    """The finished run's model card (README.md); a problem with it never fails the run."""
    from finessl.eval.model_card import write_model_card

    try:
        write_model_card(run.path)
    except (FinesslError, OSError, ValueError) as error:
        log.warning("no model card written for %s: %s", run.path, error)


def _write_pool_filter(run: RunDir, pieces) -> None:
    """``ood_excluded.csv``: what ``algorithm.ood`` dropped (read back on resume)."""
    from finessl.data.extra_labels import item_id

    verdict = pieces.pool_filter
    if verdict is None:
        return
    source, name = pieces.data.source, pieces.config.data.name
    run.write_ood_excluded([(int(i), item_id(name, source, int(i)), float(s))
                            for i, s in zip(verdict.excluded, verdict.scores)])


def distill(teacher_dir: str | Path, output: str | Path, config: Config | None = None,
            overrides: dict[str, str] | None = None, callbacks: Sequence[Callback] | None = None,
            resume: bool = False) -> dict:
    """SemiKD: trains a student run whose teacher is the trained run in ``teacher_dir``.

    Without ``config`` the teacher's own configuration is the base, with the paper's
    student (``finessl.algorithms.DISTILLATION``); ``overrides`` apply last.
    """
    from finessl.algorithms import DISTILLATION

    teacher_dir = Path(teacher_dir)
    if config is None:
        config = apply_overrides(RunDir(teacher_dir).read_config(), DISTILLATION.student)
    config = apply_overrides(config, {**(overrides or {}),
                                      DISTILLATION.teacher_key: str(teacher_dir)})
    return train(config, output, callbacks=callbacks, resume=resume)


def _write_or_show(path: Path, metrics: dict) -> Path | None:
    """Writes ``metrics`` as JSON; an unwritable place is logged, the metrics are kept."""
    try:
        write_json(path, metrics)
        return path
    except OSError as error:
        log.warning("could not write %s (%s); the metrics are only printed", path, error.strerror)
        return None


def evaluate(run_dir: str | Path, device: str = "auto") -> dict:
    """Re-evaluates a run on its test set with the run's precision; writes ``eval.json``."""
    from finessl.hub import local_run
    from finessl.inference import load

    run_dir = local_run(run_dir)  # a Hub run is evaluated (and its eval.json kept) in the cache
    predictor = load(run_dir, device)
    cfg = predictor.config
    _, test = build_test_set(cfg, predictor.model.backbone)
    loader = DataLoader(test, batch_size=cfg.train.eval_batch_size, num_workers=cfg.data.num_workers)
    precision = resolve_precision(cfg.train.precision, predictor.device)
    logits, labels = predict_logits(predictor.model, loader, predictor.device,
                                    autocast_for(precision, predictor.device))
    metrics = classification_metrics(logits, labels)
    metrics["test_missing_classes"] = [c for c, acc in zip(predictor.classes, metrics["per_class_acc"])
                                       if acc is None]
    if metrics["test_missing_classes"]:
        log.warning("the test set has no images of %s: their accuracy is not measured",
                    ", ".join(metrics["test_missing_classes"][:10]))
    metrics["written_to"] = str(_write_or_show(RunDir(run_dir) / RunDir.EVAL, metrics))
    return metrics


@torch.no_grad()
def zeroshot(config: Config | str | Path | dict, device: str = "auto") -> dict:
    """CLIP zero-shot accuracy on the configured test set (no training): the lower baseline."""
    from finessl.models.zeroshot import zeroshot_logits

    config = as_config(config)
    backbone = build_backbone(config.model).eval()
    classes, test = build_test_set(config, backbone)
    if backbone.text is None:
        raise ConfigError("zero-shot classification needs an open_clip (CLIP) backbone")
    text = backbone.text.embed(classes, config.model.text_template)
    target = resolve_device(device)
    backbone.to(target)
    loader = DataLoader(test, batch_size=config.train.eval_batch_size,
                        num_workers=config.data.num_workers)
    logits, labels = [], []
    for images, targets in loader:
        logits.append(zeroshot_logits(backbone, images.to(target), text.to(target)).cpu())
        labels.append(torch.as_tensor(targets))
    return classification_metrics(torch.cat(logits), torch.cat(labels))


def run_data(run_dir: str | Path, device: str = "auto"):
    """A trained run's model (``Predictor``) and its data as it trained on them (the pool
    without what ``algorithm.ood`` dropped), without opening every file again."""
    from finessl.data.ssl_data import build_ssl_data
    from finessl.hub import local_run
    from finessl.inference import load

    run_dir = local_run(run_dir)
    predictor = load(run_dir, device)
    cfg = predictor.config
    data = build_ssl_data(cfg.data, predictor.image_size, predictor.mean, predictor.std, cfg.seed,
                          strong_views=0, check_files=False, check_leaks=False)
    excluded = RunDir(run_dir).read_ood_excluded()
    if excluded is not None:
        data = data.without_unlabeled(excluded)
    return predictor, data


def estimate_images(predictor, data, pool: Sequence[str | Path] | None = None):
    """The images an estimate reads: those ``pool`` names (files, folders, CSV lists), or
    the run's fixed pool subset (``train.estimate_pool``), at test transform."""
    from finessl.data.datasets import FileImages
    from finessl.eval.estimate import PoolImages, pool_view
    from finessl.inference import collect_images

    if not pool:
        return pool_view(data.source.train, data.unlabeled_indices, data.transforms.test,
                         predictor.image_size, predictor.config.train.estimate_pool,
                         predictor.config.seed)
    paths = collect_images(pool)
    return PoolImages(FileImages(paths, [-1] * len(paths)), np.arange(len(paths)),
                      data.transforms.test, predictor.image_size)


def run_outputs(run_dir: str | Path, device: str = "auto", pool: Sequence[str | Path] | None = None):
    """A run's model outputs for estimating its accuracy: on its own unlabeled pool (the
    fixed subset training estimates on) or on the images ``pool`` names (files, folders,
    CSV lists), and on its labeled images under strong augmentation."""
    return loaded_outputs(*run_data(run_dir, device), pool)


def loaded_outputs(predictor, data, pool: Sequence[str | Path] | None = None):
    """``run_outputs`` for a run already loaded by ``run_data``."""
    from finessl.algorithms import trains_aux_head
    from finessl.eval.estimate import data_outputs

    cfg = predictor.config
    images = estimate_images(predictor, data, pool) if pool else None
    precision = resolve_precision(cfg.train.precision, predictor.device)
    return data_outputs(predictor.model, data, trains_aux_head(cfg.algorithm), predictor.device,
                        predictor.image_size, cfg.train.eval_batch_size, cfg.seed, images,
                        autocast_for(precision, predictor.device), cfg.train.estimate_pool)


def same_labels(config: Config, data, other_config: Config, other_data) -> bool:
    """Whether two runs trained on the same labeled images: the same data source and the
    same labeled items (with the same extra labels)."""
    keys = ("name", "root", "csv", "classes", "extra_labels")
    if any(getattr(config.data, k, None) != getattr(other_config.data, k, None) for k in keys):
        return False
    return np.array_equal(np.sort(data.labeled.indices), np.sort(other_data.labeled.indices))


def pool_prior_for(predictor, pool: Sequence[str | Path] | None = None,
                   given: str | Path | None = None):
    """The class shares the cap reads: those in the CSV ``given``, else on the run's own pool
    the ones it was told (``train.estimate_prior``); None on other images, whose shares it
    was not told."""
    from finessl.eval.estimate import read_pool_prior

    path = given or (None if pool else predictor.config.train.estimate_prior)
    return read_pool_prior(path, predictor.classes) if path else None


def estimate(run_dir: str | Path, pool: Sequence[str | Path] | None = None, device: str = "auto",
             method: str | None = None, pool_prior: str | Path | None = None,
             peer: str | Path | None = None):
    """The run's label-free accuracy estimate (``finessl.eval.estimate.Estimate``) on its
    own pool or on ``pool``; ``pool_prior``: a CSV of the pool's class shares for the cap
    (``finessl.eval.estimate.read_pool_prior``), where they are known (on its own pool, by
    default the run's ``train.estimate_prior``); ``peer``: a second run of the same classes
    (another seed) whose agreement with this one on the same images is the estimate."""
    from finessl.eval import estimate as estimators

    predictor, data = run_data(run_dir, device)
    config = predictor.config
    prior = pool_prior_for(predictor, pool, pool_prior)
    out = loaded_outputs(predictor, data, pool)
    out.prior = prior
    notes = []
    if peer is not None:
        out.peer, notes = peer_outputs(peer, run_dir, predictor, data,
                                       estimate_images(predictor, data, pool), len(out.pool), device)
    default = estimators.DEFAULT_PEERED if peer is not None else \
        (config.train.estimate if config.train.estimate != "none" else estimators.DEFAULT_ESTIMATOR)
    found = estimators.estimate(out, method or default, seed=config.seed, classes=predictor.classes)
    found.warnings.extend(notes)
    return found


def peer_outputs(peer_dir: str | Path, run_dir: str | Path, predictor, data, images, expected: int,
                 device: str = "auto") -> tuple[np.ndarray, list[str]]:
    """The peer run's probabilities on the images the run's estimate read (each model at its
    own test transform), and what makes the comparison doubtful: a peer of the same seed, or
    one trained on the same labeled images (measured: their agreement then overrates, by 13
    points on 8 runs). A peer with other classes, or the run itself, is refused."""
    from finessl.errors import ConfigError
    from finessl.eval.estimate import PoolImages, model_outputs
    from finessl.hub import local_run

    if Path(local_run(peer_dir)).resolve() == Path(local_run(run_dir)).resolve():
        raise ConfigError(f"--peer {peer_dir} is the run itself: give a second run of the same "
                          "classes, trained with another seed")
    other, other_data = run_data(peer_dir, device)
    if list(other.classes) != list(predictor.classes):
        raise ConfigError(f"--peer {peer_dir} has other classes than the run "
                          f"({', '.join(other.classes)} against {', '.join(predictor.classes)}): "
                          "the peer must be trained on the same classes, in the same order")
    view = PoolImages(images.source, images.indices, other.transform, other.image_size)
    probs = model_outputs(other.model, view, None, other.device, other.config.train.eval_batch_size,
                          with_aux=False,
                          autocast=autocast_for(resolve_precision(other.config.train.precision,
                                                                  other.device), other.device)).pool
    if len(probs) != expected:
        raise ConfigError(f"--peer {peer_dir} read {len(probs)} of the images, the run {expected}")
    notes = []
    if same_labels(predictor.config, data, other.config, other_data):
        notes.append("the peer run trained on the same labeled images as this one: two such runs "
                     "share their mistakes, and their agreement overrated them by 13 points on "
                     "average when measured (only peers with other labels were within 3); "
                     "read it as an upper bound")
    if other.config.seed == predictor.config.seed:
        notes.append(f"the peer run has the same seed ({other.config.seed}) as this one: runs of "
                     "one seed share their mistakes, so their agreement overrates both; train "
                     "the peer with another --seed")
    return probs, notes
