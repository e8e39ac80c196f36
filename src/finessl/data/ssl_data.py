"""Labeled / unlabeled / test views of a source, with the augmentations applied."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from finessl.config import DataConfig
from finessl.data.augment import Transforms, build_transforms, raw_transform
from finessl.data.datasets import SourceData, load_source
from finessl.data.splits import split_labeled_unlabeled
from finessl.errors import DataError

log = logging.getLogger(__name__)


class LabeledView(Dataset):
    """``(image, label)`` for a subset of a source."""

    def __init__(self, source: Dataset, indices: np.ndarray, transform) -> None:
        self.source, self.indices, self.transform = source, np.asarray(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, label = self.source[int(self.indices[index])]
        return self.transform(image), label


class UnlabeledView(Dataset):
    """``(index, weak, strong_1, ..., strong_n, true label or -1)`` per unlabeled image.

    ``index`` is the position in the unlabeled set, so algorithms can keep per-sample
    state (FineSSL's class pace); the true label is only used for diagnostics.
    """

    def __init__(self, source: Dataset, indices: np.ndarray, weak, strong, strong_views: int):
        self.source, self.indices = source, np.asarray(indices)
        self.weak, self.strong, self.strong_views = weak, strong, strong_views

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, label = self.source[int(self.indices[index])]
        strong = [self.strong(image) for _ in range(self.strong_views)]
        return (index, self.weak(image), *strong, label)


@dataclass
class SSLData:
    classes: list[str]
    labeled: Dataset
    unlabeled: Dataset
    test: Dataset
    transforms: Transforms
    labeled_indices: np.ndarray
    unlabeled_indices: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _cap(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or len(indices) <= limit:
        return indices
    return np.sort(np.random.default_rng(seed).choice(indices, size=limit, replace=False))


def build_ssl_data(
    config: DataConfig,
    image_size: int,
    mean,
    std,
    seed: int,
    strong_views: int = 2,
    source: SourceData | None = None,
    transforms: Transforms | None = None,
) -> SSLData:
    """Loads the source, splits it and wraps it in augmenting views."""
    source = source if source is not None else load_source(config, seed)
    transforms = transforms or build_transforms(image_size, mean, std)
    train_transforms = transforms
    if config.gpu_augment:  # the trainer augments raw uint8 batches on its device
        raw = raw_transform()
        train_transforms = Transforms(weak=raw, strong=raw, test=transforms.test)
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
    unlabeled = _cap(unlabeled, config.max_unlabeled, seed)
    if len(unlabeled) == 0:
        raise DataError("the unlabeled set is empty; add unlabeled images or keep the labeled ones in it")
    test_indices = _cap(np.arange(len(source.test)), config.max_test, seed + 1)
    return SSLData(
        classes=list(source.classes),
        labeled=LabeledView(source.train, labeled, train_transforms.weak),
        unlabeled=UnlabeledView(source.train, unlabeled, train_transforms.weak,
                                train_transforms.strong, strong_views),
        test=LabeledView(source.test, test_indices, transforms.test),
        transforms=transforms,
        labeled_indices=labeled,
        unlabeled_indices=unlabeled,
    )

