"""Labeled / unlabeled / test views of a source, with the augmentations applied.

An unreadable image in the unlabeled pool does not stop a long run: it is replaced by the
next readable one, counted (``skipped``) and reported once per worker. An unreadable
labeled or test image is an error before training starts.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import Dataset

from finessl.data.augment import Transforms, build_transforms, raw_transform
from finessl.data.datasets import SourceData, canonical_paths, dataset_targets, load_source, probe_image
from finessl.data.extra_labels import apply_extra_labels, check_agrees, listed_indices
from finessl.data.gpu_augment import BatchAugment
from finessl.data.label_studio import ImageLinks
from finessl.data.splits import split_labeled_unlabeled
from finessl.errors import DataError

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import DataConfig

log = logging.getLogger(__name__)


class LabeledView(Dataset):
    """``(image, label)`` for a subset of a source; ``labels`` overrides some (extra labels)."""

    def __init__(self, source: Dataset, indices: np.ndarray, transform,
                 labels: dict[int, int] | None = None) -> None:
        self.source, self.indices, self.transform = source, np.asarray(indices), transform
        self.labels = labels or {}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        position = int(self.indices[index])
        image, label = self.source[position]
        return self.transform(image), self.labels.get(position, label)


class UnlabeledView(Dataset):
    """``{index, weak, strong: [views], label, skipped}`` per unlabeled image.

    ``index`` is the position in the unlabeled set, so algorithms can keep per-sample
    state (FineSSL's class pace); the true label (-1 if unknown) is only used for
    diagnostics. An unreadable image is replaced by the next readable one (``skipped`` 1).
    """

    def __init__(self, source: Dataset, indices: np.ndarray, weak, strong, strong_views: int):
        self.source, self.indices = source, np.asarray(indices)
        self.weak, self.strong, self.strong_views = weak, strong, strong_views
        self.reported: set[int] = set()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        for offset in range(min(len(self), 64)):
            position = (index + offset) % len(self)
            try:
                image, label = self.source[int(self.indices[position])]
            except DataError as error:
                if position not in self.reported:
                    self.reported.add(position)
                    log.warning("skipping an unreadable unlabeled image: %s", error)
                continue
            strong = [self.strong(image) for _ in range(self.strong_views)]  # drawn first
            return {"index": position, "weak": self.weak(image), "strong": strong,
                    "label": label, "skipped": int(offset > 0)}
        raise DataError("64 unlabeled images in a row could not be read; check the unlabeled pool")


@dataclass
class DeviceViews:
    """``data.gpu_augment``: the loaders return raw uint8 images and these make the weak and
    ``strong_views`` strong views in batches on the training device."""

    weak: BatchAugment
    strong: BatchAugment
    strong_views: int


@dataclass
class SSLData:
    classes: list[str]
    labeled: Dataset
    unlabeled: Dataset
    test: Dataset
    transforms: Transforms
    labeled_indices: np.ndarray
    unlabeled_indices: np.ndarray
    device_views: DeviceViews | None = None
    source: SourceData | None = None  # the images before splitting (for ids and true labels)
    test_targets: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def without_unlabeled(self, indices: np.ndarray) -> SSLData:
        """The same data with the source images ``indices`` out of the unlabeled pool."""
        kept = np.setdiff1d(self.unlabeled_indices, indices)
        view = self.unlabeled
        pool = UnlabeledView(view.source, kept, view.weak, view.strong, view.strong_views)
        return dataclasses.replace(self, unlabeled=pool, unlabeled_indices=kept)

    @property
    def test_missing_classes(self) -> list[str]:
        """Classes without a test image: their accuracy is not measured (and top-1 covers
        the other classes only)."""
        if self.test_targets is None or len(self.test_targets) == 0:  # no test set at all
            return []
        counts = np.bincount(self.test_targets[self.test_targets >= 0], minlength=self.num_classes)
        return [name for name, count in zip(self.classes, counts) if count == 0]


def cap_indices(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or len(indices) <= limit:
        return indices
    return np.sort(np.random.default_rng(seed).choice(indices, size=limit, replace=False))


def check_some_labels(labeled: np.ndarray, overrides: dict[int, int], source: SourceData,
                      num_classes: int) -> None:
    """Training needs labeled images; a class without any is learnt only from the others'
    margins, so it is worth a warning (the cold start with a small budget can leave one)."""
    if len(labeled) == 0:
        raise DataError("no labeled image: data.labels_per_class is 0 and data.extra_labels adds "
                        "none. `finessl suggest --preset NAME --budget K --out first.csv` (or "
                        "--config FILE) lists the images to label first; fill in its label column "
                        "and give it as data.extra_labels")
    labels = source.train_targets[labeled].copy()
    if overrides:
        where = {int(i): p for p, i in enumerate(labeled)}
        for index, label in overrides.items():
            labels[where[index]] = label
    missing = [source.classes[k] for k in range(num_classes) if not (labels == k).any()]
    if missing:
        log.warning("%d class(es) have no labeled image (%s); the model will hardly predict them. "
                    "Label a few (finessl suggest)", len(missing), ", ".join(missing[:10]))


def build_ssl_data(
    config: DataConfig,
    image_size: int,
    mean,
    std,
    seed: int,
    strong_views: int = 2,
    source: SourceData | None = None,
    transforms: Transforms | None = None,
    check_files: bool = True,
    check_leaks: bool = True,
    need_labels: bool = True,
) -> SSLData:
    """Loads the source, splits it and wraps it in augmenting views; with ``check_files``,
    every labeled and test image file is opened once first; ``check_leaks`` refuses test
    files among the training images (the audit reports them instead). ``need_labels``
    refuses a labeled set without any image (what training needs; choosing the first
    labels does not)."""
    source = source if source is not None else load_source(config, seed)
    links = config.options("label_studio")
    studio = ImageLinks(links.root, links.url)
    extra = apply_extra_labels(Path(config.extra_labels), source, config.name, studio,
                               links.conflicts) if config.extra_labels else None
    if extra is not None:
        source = extra.source
    transforms = transforms or build_transforms(image_size, mean, std, config.strong_augment)
    train_transforms, device_views = transforms, None
    if config.gpu_augment:  # the trainer augments raw uint8 batches on its device
        raw = raw_transform()
        train_transforms = Transforms(weak=raw, strong=raw, test=transforms.test)
        device_views = DeviceViews(BatchAugment(image_size, mean, std, strong=False),
                                   BatchAugment(image_size, mean, std, strong=True,
                                                recipe=config.strong_augment), strong_views)
        strong_views = 0
    num_classes = len(source.classes)
    labels_per_class = config.labels_per_class
    if source.labels_given and labels_per_class is not None:
        counts = np.bincount(source.train_targets[source.train_targets >= 0], minlength=num_classes)
        if counts.min() < labels_per_class:
            log.warning("a class has only %d labeled images; using all labeled images", counts.min())
            labels_per_class = None
    labeled, unlabeled = split_labeled_unlabeled(
        source.train_targets,
        num_classes,
        labels_per_class,
        seed=seed,
        mode=config.split,
        unlabeled_includes_labeled=config.unlabeled_includes_labeled,
        labeled_imbalance=config.labeled_imbalance,
        unlabeled_imbalance=config.unlabeled_imbalance,
    )
    unlabeled = cap_indices(unlabeled, config.max_unlabeled, seed)  # before extra labels: the
    overrides: dict[int, int] = {}                                   # pool only loses them
    if config.exclude:
        dropped = listed_indices(Path(config.exclude), source, config.name, "data.exclude")
        labeled, unlabeled = np.setdiff1d(labeled, dropped), np.setdiff1d(unlabeled, dropped)
        log.info("data.exclude: %d image(s) left out of training", len(dropped))
    if extra is not None:
        check_agrees(extra, labeled, config.name)
        labeled = np.union1d(labeled, extra.indices)
        overrides = dict(zip(extra.indices.tolist(), extra.labels.tolist()))
        if not config.extra_labels_in_unlabeled:
            unlabeled = np.setdiff1d(unlabeled, extra.indices)
    if len(unlabeled) == 0:
        raise DataError("the unlabeled set is empty; add unlabeled images or keep the labeled ones in it")
    if need_labels:
        check_some_labels(labeled, overrides, source, num_classes)
    test_indices = cap_indices(np.arange(len(source.test)), config.max_test, seed + 1)
    if len(test_indices) == 0 and source.test_given:
        raise DataError("the test set is empty; give test images (a test folder or data.test_csv)")
    if not source.test_given:
        log.warning("no test set: accuracy is not measured, only estimated from the unlabeled "
                    "pool (final.json: estimated_top1); give a test folder or data.test_csv "
                    "to measure it")
    test_targets = dataset_targets(source.test)[test_indices]
    if check_leaks:
        check_no_test_leak(source, np.union1d(labeled, unlabeled), test_indices,
                           extra.first_added if extra is not None else None)
    if check_files:
        check_readable(source.train, labeled, "labeled")
        check_readable(source.test, test_indices, "test")
    return SSLData(
        classes=list(source.classes),
        labeled=LabeledView(source.train, labeled, train_transforms.weak, overrides),
        unlabeled=UnlabeledView(source.train, unlabeled, train_transforms.weak,
                                train_transforms.strong, strong_views),
        test=LabeledView(source.test, test_indices, transforms.test),
        transforms=transforms,
        labeled_indices=labeled,
        unlabeled_indices=unlabeled,
        device_views=device_views,
        source=source,
        test_targets=test_targets,
    )


def check_no_test_leak(source: SourceData, train: np.ndarray, test: np.ndarray,
                       first_added: int | None) -> None:
    """Training images that are also test images (the same file under any name: a test
    folder inside the labeled one, a test image in data.extra_labels) are refused: the test
    accuracy would be measured on what was trained on. Copies under other file names are
    what ``finessl audit`` finds."""
    train_paths = getattr(source.train, "paths", None)
    test_paths = getattr(source.test, "paths", None)
    if train_paths is None or test_paths is None:
        return
    test_files = dict(zip(canonical_paths([test_paths[int(i)] for i in test]), test.tolist()))
    keys = canonical_paths([train_paths[int(i)] for i in train])
    leaks = [(int(i), key) for i, key in zip(train, keys) if key in test_files]
    if leaks:
        index, key = leaks[0]
        where = ("data.extra_labels names" if first_added is not None and index >= first_added
                 else "the training data holds")
        raise DataError(f"{where} {len(leaks)} image(s) of the test set (e.g. {key}): the test "
                        "accuracy would be measured on training images. Keep the test images "
                        "apart from the labeled and unlabeled ones")


def check_readable(dataset: Dataset, indices: np.ndarray, what: str) -> None:
    """Opens every labeled / test image file once (headers only) before training starts."""
    paths = getattr(dataset, "paths", None)
    if paths is None:
        return
    bad = []
    for i in indices:
        try:
            probe_image(paths[int(i)])
        except DataError as error:
            bad.append(str(error))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"{len(bad)} {what} image(s) cannot be read: {bad[0]}{more}")

