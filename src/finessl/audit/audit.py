"""``finessl audit``: the checks over one scan of the labeled set, the pool and the test set.

The model is a trained run's (``--run``) or the configured pretrained backbone; the data
is the configuration's, split exactly as training would split it. What comes back is an
``Audit``: plain arrays and lists, written out by ``finessl.audit.output``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from finessl.audit.duplicates import Leak, duplicate_groups, find_test_copies
from finessl.audit.ood import OOD_SCORES, ood_check
from finessl.audit.prior import em_prior, missing_classes
from finessl.audit.prototypes import PrototypeClassifier
from finessl.audit.row_file import blocks_of
from finessl.audit.scan import Scan, scan
from finessl.audit.suspects import Suspect, label_suspects
from finessl.config import Config
from finessl.data.augment import build_transforms
from finessl.data.extra_labels import item_id
from finessl.data.ssl_data import SSLData, build_ssl_data
from finessl.device import resolve_device

log = logging.getLogger(__name__)

# Thumbnail cosine similarity from which two images count as near copies. Chosen on a
# held-out part of Fashion-MNIST's training set (docs/results.md): re-encoded copies there
# lie above 0.998, different images below.
NEAR_SIMILARITY = 0.998
DEFAULT_SCORE = "propagation"
# Pool images the class-prior estimate reads (a seeded sample above): its error is
# about 1/sqrt of that, far below the prior's own bias.
PRIOR_SAMPLE = 100_000


@dataclass
class AuditSettings:
    score: str = DEFAULT_SCORE
    near_similarity: float = NEAR_SIMILARITY
    batch_size: int = 128
    workers: int = 0
    device: str = "auto"
    seed: int = 0


@dataclass
class Audit:
    """Everything the audit found; positions index ``labeled`` / ``pool`` / ``test``."""

    classes: list[str]
    names: dict[str, Sequence[str]]  # "labeled" / "pool" / "test" -> image names, scan order
    labeled: Scan
    labels: np.ndarray
    pool: Scan
    test: Scan
    ood_scores: np.ndarray
    labeled_scores: np.ndarray
    ood_fraction: float
    ood_flagged: np.ndarray  # bool per pool image
    duplicate_groups: list[list[int]]  # positions in labeled + pool (``train_name``)
    leaks: list[tuple[str, str, str, float]]  # (train image, test image, kind, similarity)
    suspects: list[Suspect]
    pool_prior: np.ndarray
    labeled_prior: np.ndarray
    missing: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)
    settings: AuditSettings = field(default_factory=AuditSettings)
    model: str = ""
    leak_positions: list[int] = field(default_factory=list)  # of ``leaks``, in labeled + pool
    # image("labeled" | "pool" | "test", position) -> PIL image, for thumbnails
    image: Callable[[str, int], object] | None = None


class ImageNames(Sequence[str]):
    """The names of a scan's images, made when one is read: a pool of a million costs
    nothing beyond the scan's own index array (a list of them would hold ~75 MB)."""

    def __init__(self, name: Callable[[int], str], indices: np.ndarray) -> None:
        self._name, self._indices = name, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, position):
        if isinstance(position, slice):
            return ImageNames(self._name, self._indices[position])
        return self._name(int(self._indices[position]))


def audit(config: Config, run_dir: str | None = None, settings: AuditSettings | None = None,
          progress: Callable[[int], None] | None = None) -> Audit:
    """Scans the configured data with the run's model (or the pretrained backbone) and runs
    every check."""
    settings = settings or AuditSettings()
    OOD_SCORES.get(settings.score)
    encode, image_size, mean, std, device, model = encoder(config, run_dir, settings.device)
    data = build_ssl_data(config.data, image_size, mean, std, config.seed, strong_views=0,
                          check_files=False, check_leaks=False)
    transform = build_transforms(image_size, mean, std).test
    source = data.source

    def scan_of(dataset, indices):
        return scan(encode, dataset, indices, transform, image_size, device, settings.batch_size,
                    settings.workers, progress)

    pool_indices = np.setdiff1d(data.unlabeled_indices, data.labeled_indices)
    # one scan of the training images, labeled first: the two sets are views of it, and the
    # duplicate search reads it whole without a concatenated copy
    train = scan_of(source.train, np.concatenate([data.labeled_indices, pool_indices]))
    cut = int(np.isin(train.indices, data.labeled_indices).sum())  # the readable labeled images
    labeled, pool = train.subset(slice(0, cut)), train.subset(slice(cut, None))
    test = scan_of(source.test, data.test.indices)
    labels = np.asarray([_label(data, int(i)) for i in labeled.indices], dtype=np.int64)

    def train_id(index: int) -> str:
        return item_id(config.data.name, source, index)

    def test_id(index: int) -> str:
        return _test_id(config.data.name, source, index)

    names = {"labeled": ImageNames(train_id, labeled.indices), "pool": ImageNames(train_id, pool.indices),
             "test": ImageNames(test_id, test.indices)}
    failed = [(train_id(i), why) for i, why in train.failed] + [(test_id(i), why) for i, why in test.failed]
    result = _checks(data.classes, names, train, cut, labels, test, failed, settings, model)

    def image(kind: str, position: int):
        found = {"labeled": labeled, "pool": pool, "test": test}[kind]
        dataset = source.test if kind == "test" else source.train
        return dataset[int(found.indices[position])][0]

    result.image = image
    return result


def _checks(classes, names, train: Scan, cut: int, labels, test: Scan, failed, settings,
            model: str) -> Audit:
    """Every check over the scans; ``train``'s first ``cut`` rows are the labeled images."""
    C = len(classes)
    labeled, pool = train.subset(slice(0, cut)), train.subset(slice(cut, None))
    if len(pool):  # features stay float16 (unit rows): each check converts the rows it reads
        ood_scores, fraction, labeled_scores = ood_check(settings.score, train.features, cut, labels,
                                                         C, settings.seed)
    else:
        ood_scores, fraction, labeled_scores = np.zeros(0), 0.0, np.zeros(0)
    flagged = np.zeros(len(pool), dtype=bool)
    count = int(round(fraction * len(pool)))
    if count:
        flagged[np.argsort(-ood_scores, kind="stable")[:count]] = True
    groups = duplicate_groups(train.thumbnails, train.features, train.digests, settings.near_similarity)
    found = _leaks(train, test, settings)
    leaks = [(train_name(names, leak.train), names["test"][leak.test], leak.kind, leak.similarity)
             for leak in found]
    labeled_features = np.asarray(labeled.features[0:cut], np.float32)
    classifier = PrototypeClassifier(labeled_features, labels, C)
    in_task = _in_task_probabilities(classifier, pool.features, flagged, settings.seed)
    prior = em_prior(in_task, classifier.train_prior) if len(in_task) else classifier.train_prior
    suspects = label_suspects(labeled_features, labels, pool.features, C, classifier, skip=flagged)
    return Audit(classes, names, labeled, labels, pool, test, ood_scores, labeled_scores, fraction,
                 flagged, groups, leaks, suspects, prior, classifier.train_prior,
                 missing_classes(prior, classes), failed, settings, model,
                 leak_positions=[leak.train for leak in found])


def train_name(names: dict[str, Sequence[str]], position: int) -> str:
    """The name of a training image by its position in the scan (labeled first, then pool)."""
    labeled = len(names["labeled"])
    return names["labeled"][position] if position < labeled else names["pool"][position - labeled]


def _in_task_probabilities(classifier: PrototypeClassifier, pool, flagged: np.ndarray,
                           seed: int) -> np.ndarray:
    """The classifier's probabilities of the pool images not judged foreign (of a seeded
    sample of ``PRIOR_SAMPLE`` above), read a block at a time."""
    keep = np.flatnonzero(~flagged)
    if len(keep) > PRIOR_SAMPLE:
        keep = np.sort(np.random.default_rng(seed).choice(keep, PRIOR_SAMPLE, replace=False))
    chosen = np.zeros(len(flagged), bool)
    chosen[keep] = True
    parts = [classifier.probabilities(np.asarray(rows, np.float32)[chosen[start:start + len(rows)]])
             for start, rows in blocks_of(pool)]
    return np.concatenate(parts) if parts else np.zeros((0, classifier.classes))


def _leaks(train: Scan, test: Scan, settings) -> list[Leak]:
    if len(test) == 0 or len(train) == 0:
        return []
    return find_test_copies(train.thumbnails, train.features, train.digests, test.thumbnails,
                      test.features, test.digests, settings.near_similarity)


def _label(data: SSLData, index: int) -> int:
    return int(data.labeled.labels.get(index, data.source.train_targets[index]))


def _test_id(dataset_name: str, source, index: int) -> str:
    paths = getattr(source.test, "paths", None)
    return os.path.abspath(paths[index]) if paths is not None else f"{dataset_name}:test:{index}"


def encoder(config: Config, run_dir: str | None, device_name: str):
    """(images -> features, image size, mean, std, device, description) of the audit's model."""
    device = resolve_device(device_name)
    if run_dir is not None:
        from finessl.inference import load

        predictor = load(run_dir, device_name)
        model = predictor.model.eval()
        return (model.features, predictor.image_size, predictor.mean, predictor.std, predictor.device,
                f"the trained run {run_dir}")
    from finessl.models import build_backbone

    backbone = build_backbone(config.model).to(device).eval()
    return (backbone, backbone.image_size, backbone.mean, backbone.std, device,
            f"the pretrained backbone {config.model.backbone} ({config.model.pretrained})")
