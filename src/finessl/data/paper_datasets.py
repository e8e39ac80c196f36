"""The paper's other datasets: Food-101, Semi-Aves, ImageNet (1% / 10%), STL-10.

Each reads its public release's on-disk layout under ``data.root`` and says where to put
the files when they are missing. (CIFAR and their long-tailed variants are in
``datasets.py``: long tails come from ``data.labeled_imbalance`` / ``unlabeled_imbalance``.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from finessl.data.datasets import DATASETS, FileImages, SourceData, _class_folders, _download_error
from finessl.errors import DataError
from finessl.options import method_options, opt

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import DataConfig


@DATASETS.register("food101")
def food101(config: DataConfig, seed: int) -> SourceData:
    """torchvision's Food101: ``root/food-101/{images,meta}`` (downloads 5 GB if allowed)."""
    import torchvision

    try:
        train = torchvision.datasets.Food101(config.root, split="train", download=config.download)
        test = torchvision.datasets.Food101(config.root, split="test", download=config.download)
    except (RuntimeError, OSError) as error:
        raise _download_error("Food-101", config.root,
                              "food-101/ (images/ and meta/ from food-101.tar.gz)", error) from error
    # Read through finessl's loader (EXIF orientation, bad-file errors), not torchvision's.
    return SourceData(list(train.classes), FileImages(train._image_files, train._labels),
                      np.asarray(train._labels), FileImages(test._image_files, test._labels))


def _read_list(root: Path, name: str, required: bool = True) -> tuple[list[Path], list[int]]:
    path = root / name
    if not path.is_file():
        if required:
            raise DataError(
                f"Semi-Aves list {str(path)!r} is missing. Put the public release (images and "
                "l_train_val.txt, u_train_in.txt, u_train_out.txt, test.txt) into data.root")
        return [], []
    paths, labels = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts:
            paths.append(root / parts[0])
            labels.append(int(parts[1]) if len(parts) > 1 else -1)
    return paths, labels


@method_options("data", "semi-aves", used_by=("semi-aves",),
                aliases={"out_of_distribution": "out_of_distribution"})
@dataclass
class SemiAvesOptions:
    out_of_distribution: bool = opt(False, "add the out-of-distribution unlabeled pool")


@DATASETS.register("semi-aves")
def semi_aves(config: DataConfig, seed: int) -> SourceData:
    """Semi-Aves (FGVC7 Semi-Supervised iNat challenge): 200 labeled bird classes, unlabeled
    in-distribution images and, with ``data.semi-aves.out_of_distribution``, the 800-class OOD pool.

    Layout (the release's lists, lines ``relative/path.jpg label``): ``l_train_val.txt``,
    ``u_train_in.txt``, ``u_train_out.txt``, ``test.txt``.
    """
    root = Path(config.root)
    paths, labels = _read_list(root, "l_train_val.txt")
    unlabeled, _ = _read_list(root, "u_train_in.txt")
    if config.options("semi-aves").out_of_distribution:
        unlabeled += _read_list(root, "u_train_out.txt")[0]
    test_paths, test_labels = _read_list(root, "test.txt")
    classes = [str(k) for k in range(max(labels) + 1)]
    targets = labels + [-1] * len(unlabeled)
    return SourceData(classes, FileImages(paths + unlabeled, targets), np.asarray(targets),
                      FileImages(test_paths, test_labels), labels_given=True)


@method_options("data", "imagenet", used_by=("imagenet",),
                aliases={"label_fraction": "label_fraction", "subset_file": "subset_file"})
@dataclass
class ImageNetOptions:
    """Which ImageNet training images are labeled (else data.labels_per_class)."""

    label_fraction: float | None = opt(None, "labeled fraction per class", gt=0, le=1)
    subset_file: str | None = opt(None, "file listing the labeled images (1percent.txt)")


@DATASETS.register("imagenet")
def imagenet(config: DataConfig, seed: int) -> SourceData:
    """ILSVRC-2012 as ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``.

    Labeled subset: ``data.imagenet.subset_file`` (e.g. SimCLR's ``1percent.txt`` /
    ``10percent.txt``, one file name per line) or ``data.imagenet.label_fraction`` of every
    class, drawn with the seed;
    everything else is unlabeled.
    """
    root = Path(config.root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"ImageNet folder {str(root / split)!r} is missing: put ILSVRC-2012 "
                            "there as one sub-folder per class (e.g. n01440764/)")
    paths, targets, classes = _class_folders(root / "train", "labeled")
    test_paths, test_targets, _ = _class_folders(root / "val", "test", classes)
    targets = np.asarray(targets)
    subset = config.options("imagenet")
    if subset.subset_file:
        chosen = set(Path(subset.subset_file).read_text().split())
        keep = np.array([Path(p).name in chosen for p in paths])
        if not keep.any():
            raise DataError(f"no training image is named in {subset.subset_file}")
    elif subset.label_fraction is not None:
        rng = np.random.default_rng(seed)
        keep = np.zeros(len(paths), dtype=bool)
        for k in range(len(classes)):
            index = np.flatnonzero(targets == k)
            n = max(1, round(subset.label_fraction * len(index)))
            keep[rng.choice(index, size=n, replace=False)] = True
    else:
        raise DataError("ImageNet needs data.label_fraction (0.01, 0.1) or data.subset_file")
    # Unlabeled = every other training image (and, by default, the labeled ones too).
    labeled_targets = np.where(keep, targets, -1)
    return SourceData(classes, FileImages(paths, labeled_targets), labeled_targets,
                      FileImages(test_paths, test_targets), labels_given=True)


class STL10Binary(Dataset):
    """The STL-10 binary release: ``stl10_binary/{train,test,unlabeled}_X.bin`` (uint8,
    N x 3 x 96 x 96, column-major) and ``*_y.bin`` (labels 1..10)."""

    def __init__(self, folder: Path, split: str) -> None:
        images = folder / f"{split}_X.bin"
        if not images.is_file():
            raise DataError(f"STL-10 file {str(images)!r} is missing: extract stl10_binary.tar.gz "
                            "into data.root (or set data.download true)")
        raw = np.fromfile(images, dtype=np.uint8)
        self.images = raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
        labels = folder / f"{split}_y.bin"
        self.targets = (np.fromfile(labels, dtype=np.uint8).astype(np.int64) - 1 if labels.is_file()
                        else np.full(len(self.images), -1, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return Image.fromarray(np.ascontiguousarray(self.images[index])), int(self.targets[index])


@DATASETS.register("stl10")
def stl10(config: DataConfig, seed: int) -> SourceData:
    """STL-10: 5,000 labeled training images plus its own 100,000-image unlabeled split."""
    folder = Path(config.root) / "stl10_binary"
    if not folder.is_dir() and config.download:
        import torchvision

        try:
            torchvision.datasets.STL10(config.root, split="train", download=True)
        except (RuntimeError, OSError) as error:
            raise _download_error("STL-10", config.root, "stl10_binary/", error) from error
    train, unlabeled = STL10Binary(folder, "train"), STL10Binary(folder, "unlabeled")
    test = STL10Binary(folder, "test")
    names = folder / "class_names.txt"
    classes = names.read_text().split() if names.is_file() else [str(k) for k in range(10)]
    targets = np.concatenate([train.targets, unlabeled.targets])
    return SourceData(classes, _Concat(train, unlabeled), targets, test)


class _Concat(Dataset):
    def __init__(self, first: Dataset, second: Dataset) -> None:
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, index: int):
        n = len(self.first)
        return self.first[index] if index < n else self.second[index - n]
