"""Dataset registry: each entry turns a ``DataConfig`` into images, labels and class names.

A source is one training pool (labels known, or ``-1`` for unlabeled images) plus a
test set. Splitting into labeled / unlabeled happens afterwards, the same way for all.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from finessl.data.path_list import PathList, PathListBuilder, walk_images
from finessl.errors import DataError
from finessl.options import method_options, opt
from finessl.registry import Registry

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import DataConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


@dataclass
class SourceData:
    """Images before splitting. ``train[i] -> (PIL image, label)``; label -1 = unlabeled."""

    classes: list[str]
    train: Dataset
    train_targets: np.ndarray
    test: Dataset
    # True when the source fixes which images are labeled (folder / csv): the labeled set
    # is then all labeled images, unless labels_per_class asks for fewer.
    labels_given: bool = False
    # False when the user gave no test set (folder / csv without one): training then reports
    # the label-free accuracy estimate only.
    test_given: bool = True


DATASETS: Registry[Callable[[DataConfig, int], SourceData]] = Registry("dataset")


def load_source(config: DataConfig, seed: int) -> SourceData:
    source = DATASETS.get(config.name)(config, seed)
    return select_classes(source, config.classes) if config.classes else source


class Relabeled(Dataset):
    """Items ``indices`` of a dataset with labels renumbered by ``mapping`` (-1 stays -1)."""

    def __init__(self, dataset: Dataset, indices: np.ndarray, mapping: dict[int, int]) -> None:
        self.dataset, self.indices, self.mapping = dataset, np.asarray(indices), mapping

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> np.ndarray:
        inner = dataset_targets(self.dataset)[self.indices]
        return np.asarray([self.mapping.get(int(t), -1) for t in inner], dtype=np.int64)

    @property
    def paths(self) -> PathList | None:
        """The files of the kept items, where the dataset is a list of files."""
        inner = getattr(self.dataset, "paths", None)
        return None if inner is None else PathList.of(inner).take(self.indices)

    def __getitem__(self, index: int):
        image, label = self.dataset[int(self.indices[index])]
        return image, self.mapping.get(int(label), -1)


def dataset_targets(dataset: Dataset) -> np.ndarray:
    """Labels of a dataset without decoding its images where it keeps them as a list."""
    for attribute in ("targets", "_labels", "labels"):
        values = getattr(dataset, attribute, None)
        if values is not None and len(values) == len(dataset):
            return np.asarray(values, dtype=np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def select_classes(source: SourceData, wanted: Sequence[str]) -> SourceData:
    """Keeps only the classes ``wanted`` (names, or indices into the class list), numbered
    in the given order. Images without a label (-1) stay in the unlabeled pool."""
    chosen = []
    for item in wanted:
        item = str(item).strip()
        if item in source.classes:
            chosen.append(source.classes.index(item))
        elif item.isdigit() and int(item) < len(source.classes):
            chosen.append(int(item))
        else:
            raise DataError(f"data.classes: no class {item!r}; the classes are "
                            f"{', '.join(source.classes[:40])}{' ...' if len(source.classes) > 40 else ''}")
    if len(set(chosen)) != len(chosen):
        raise DataError("data.classes lists a class twice")
    if len(chosen) < 2:
        raise DataError("data.classes must keep at least two classes")
    mapping = {old: new for new, old in enumerate(chosen)}
    train_keep = np.flatnonzero(np.isin(source.train_targets, chosen) | (source.train_targets < 0))
    test_targets = dataset_targets(source.test)
    test_keep = np.flatnonzero(np.isin(test_targets, chosen))
    targets = np.asarray([mapping.get(int(t), -1) for t in source.train_targets[train_keep]])
    return SourceData([source.classes[k] for k in chosen], Relabeled(source.train, train_keep, mapping),
                      targets, Relabeled(source.test, test_keep, mapping), source.labels_given,
                      source.test_given)


def _open(path: str | Path) -> Image.Image:
    """Opens an image file; a missing, unreadable or oversized one is a DataError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except FileNotFoundError as error:
        raise DataError(f"image {str(path)!r} does not exist") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"image {str(path)!r} is too large to decode safely ({error})") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"image {str(path)!r} is not a readable image ({error})") from error


def probe_image(path: str | Path) -> None:
    """Checks that a file opens as an image (header only; cheap)."""
    _open(path).close()


def to_rgb8(image: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel; 16- and 32-bit grayscale is scaled, not clipped."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() <= 65535 else pixels.max()
        if image.mode == "F":
            top = max(1.0, float(pixels.max()))
        scaled = np.clip(pixels / top * 255.0, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(scaled, "L")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Opens an image as 8-bit RGB, upright as its EXIF orientation says (phone photos are
    stored sideways), with a clear error naming a missing or corrupt file."""
    image = _open(path)
    try:
        with image:
            image.load()
            return to_rgb8(upright(image))
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"image {str(path)!r} is not a readable image ({error})") from error


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says; unchanged without (or with a
    damaged) tag."""
    try:
        return ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError, TypeError, KeyError, ZeroDivisionError):
        return image


def canonical_paths(paths: Iterable[str | Path]) -> list[str]:
    """Absolute paths with their folders' links resolved, so two names of one file (a
    relative and an absolute path, a folder reached through a link) compare equal. Each
    folder is resolved once, not each file."""
    return list(iter_canonical(paths))


def iter_canonical(paths: Iterable[str | Path]) -> Iterator[str]:
    """``canonical_paths`` one at a time (for pools too large to hold as strings)."""
    folders: dict[str, str] = {}
    for path in paths:
        folder, name = os.path.split(os.path.abspath(path))
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        yield os.path.join(folders[folder], name)


def list_images(folder: Path) -> PathList:
    """The images under ``folder``, sorted (compact: one buffer, not an object per file)."""
    return walk_images(folder, IMAGE_EXTENSIONS)


class FileImages(Dataset):
    """Images on disk with known (or -1) labels."""

    def __init__(self, paths: Sequence[Path | str], targets: Sequence[int]) -> None:
        self.paths = PathList.of(paths)
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return load_image(self.paths[index]), int(self.targets[index])


def _require_dir(path: str | None, what: str) -> Path:
    if not path:
        raise DataError(f"set data.{what} to a folder of images")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"data.{what} folder {str(folder)!r} does not exist")
    return folder


def _class_folders(root: Path, what: str, classes: list[str] | None = None):
    """(paths, targets, classes) from ``root/<class>/*.png``; empty classes are errors."""
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not found:
        raise DataError(f"{what} folder {str(root)!r} has no class sub-folders")
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{what} folder {str(root)!r} has classes not in training: {unknown}")
    paths, targets = PathList.of([]), []
    for k, name in enumerate(classes):
        folder = root / name
        if folder.is_dir() and not os.access(folder, os.R_OK | os.X_OK):
            raise DataError(f"class folder {str(folder)!r} cannot be read (permissions)")
        images = list_images(folder) if folder.is_dir() else PathList.of([])
        if not images and what == "labeled":
            raise DataError(f"class folder {str(root / name)!r} has no images; add some or remove it")
        paths += images
        targets += [k] * len(images)
    return paths, targets, classes


# --------------------------------------------------------------------------- registry


@method_options("data", "folder", used_by=("folder",),
                aliases={"labeled_dir": "labeled_dir", "unlabeled_dir": "unlabeled_dir",
                         "test_dir": "test_dir"})
@dataclass
class FolderOptions:
    """Where the folder dataset's images are (each defaults to a folder under data.root)."""

    labeled_dir: str | None = opt(None, "labeled_dir/<class>/* (default root/labeled)")
    unlabeled_dir: str | None = opt(None, "unlabeled images, any layout (default root/unlabeled)")
    test_dir: str | None = opt(None, "test_dir/<class>/* (default root/test)")


@DATASETS.register("folder")
def folder_dataset(config: DataConfig, seed: int) -> SourceData:
    """``labeled_dir/<class>/*``, ``unlabeled_dir/**`` (no labels), ``test_dir/<class>/*``.

    Folder names default to ``root/labeled``, ``root/unlabeled`` and ``root/test``.
    """
    root = Path(config.root)
    folders = config.options("folder")
    labeled_dir = _require_dir(folders.labeled_dir or str(root / "labeled"), "folder.labeled_dir")
    paths, targets, classes = _class_folders(labeled_dir, "labeled")
    unlabeled_paths = PathList.of([])
    if folders.unlabeled_dir or (root / "unlabeled").is_dir():
        unlabeled_dir = _require_dir(folders.unlabeled_dir or str(root / "unlabeled"),
                                     "folder.unlabeled_dir")
        unlabeled_paths = list_images(unlabeled_dir)
        labeled_files = set(canonical_paths(paths))
        again = np.fromiter((key in labeled_files for key in iter_canonical(unlabeled_paths)),
                            bool, len(unlabeled_paths))
        if again.any():  # an unlabeled folder that holds the labeled one
            log.info("%d labeled image(s) found again under the unlabeled folder are listed once, "
                     "as labeled", int(again.sum()))
            unlabeled_paths = unlabeled_paths.take(~again)
    test_given = bool(folders.test_dir) or (root / "test").is_dir()
    test_paths, test_targets = [], []
    if test_given:
        test_dir = _require_dir(folders.test_dir or str(root / "test"), "folder.test_dir")
        test_paths, test_targets, _ = _class_folders(test_dir, "test", classes)
    all_targets = np.concatenate([np.asarray(targets, np.int64), np.full(len(unlabeled_paths), -1)])
    return SourceData(
        classes=classes,
        train=FileImages(paths + unlabeled_paths, all_targets),
        train_targets=np.asarray(all_targets),
        test=FileImages(test_paths, test_targets),
        labels_given=True,
        test_given=test_given,
    )


def _read_csv(path: Path, classes: list[str] | None = None):
    """Rows ``path,label`` (header optional; empty label = unlabeled); paths relative to the file."""
    if not path.is_file():
        raise DataError(f"CSV list {str(path)!r} does not exist")
    paths, row_labels, spelled = PathListBuilder(), [], {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # a BOM is dropped
            for row in csv.reader(handle):
                if not row or row[0].strip().lower() in ("path", "image", "file", "filename"):
                    continue
                label = row[1].strip() if len(row) > 1 else ""
                row_labels.append(spelled.setdefault(label, label))  # one str per class, not per row
                image = Path(row[0].strip())
                paths.append(image if image.is_absolute() else path.parent / image)
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"CSV list {str(path)!r} is not a readable UTF-8 CSV ({error})") from None
    listed = paths.build()
    if not len(listed):
        raise DataError(f"CSV list {str(path)!r} has no rows")
    check_listed_once(listed, row_labels, f"CSV list {str(path)!r}")
    found = sorted(label for label in spelled if label)
    folded: dict[str, str] = {}
    for label in found:
        other = folded.setdefault(label.casefold(), label)
        if other != label:
            raise DataError(f"CSV list {str(path)!r} has labels {other!r} and {label!r}, which "
                            "differ only in case; use one spelling")
    names = classes or found
    if not names:
        raise DataError(f"CSV list {str(path)!r} has no labeled rows")
    index = {name: k for k, name in enumerate(names)}
    unknown = sorted(label for label in spelled if label and label not in index)
    if unknown:
        raise DataError(f"CSV list {str(path)!r} has labels not in training: {unknown}")
    codes = {label: index[label] if label else -1 for label in spelled}
    return listed, np.fromiter((codes[label] for label in row_labels), np.int64, len(row_labels)), names


def check_listed_once(paths: Sequence[str | Path], labels: Sequence[str], where: str) -> None:
    """An image may be listed once: twice (under any name of the same file) is an error
    that says whether the two rows agree. Memory: one 8-byte hash per row; only rows whose
    hash repeats are compared by name."""
    hashes = np.fromiter((hash(key) for key in iter_canonical(paths)), np.int64, len(paths))
    order = np.argsort(hashes, kind="stable")
    repeated = np.zeros(len(paths), bool)
    same = hashes[order][1:] == hashes[order][:-1]
    repeated[order[1:][same]] = repeated[order[:-1][same]] = True
    first: dict[str, int] = {}
    for i in np.flatnonzero(repeated).tolist():
        key = canonical_paths([paths[i]])[0]
        if key in first:
            j = first[key]
            agree = labels[i] == labels[j]
            how = (f"twice with the same label {labels[i]!r}" if agree else
                   f"twice with different labels ({labels[j] or 'unlabeled'!r} and "
                   f"{labels[i] or 'unlabeled'!r})")
            raise DataError(f"{where} lists {str(paths[i])!r} {how}; list each image once")
        first[key] = i


@method_options("data", "csv", used_by=("csv",), aliases={"csv": "train", "test_csv": "test"})
@dataclass
class CsvOptions:
    """The csv dataset's lists (the old keys data.csv and data.test_csv still work)."""

    train: str | None = opt(None, "training list, rows path,label (an empty label = unlabeled)")
    test: str | None = opt(None, "test list, rows path,label")


@DATASETS.register("csv")
def csv_dataset(config: DataConfig, seed: int) -> SourceData:
    """``data.csv.train`` lists training images (empty label = unlabeled); ``data.csv.test``
    the test set (optional: without one, training reports the label-free estimate only)."""
    lists = config.options("csv")
    if not lists.train:
        raise DataError("the csv dataset needs data.csv (rows: path,label; an empty label is "
                        "unlabeled) and, to measure accuracy, data.test_csv")
    paths, targets, classes = _read_csv(Path(lists.train))
    test_paths, test_targets = [], []
    if lists.test:
        test_paths, test_targets, _ = _read_csv(Path(lists.test), classes)
        if min(test_targets) < 0:
            raise DataError(f"every row of {lists.test} needs a label")
    return SourceData(classes, FileImages(paths, targets), np.asarray(targets),
                      FileImages(test_paths, test_targets), labels_given=True,
                      test_given=bool(lists.test))


def _download_error(name: str, root: str, where: str, error: Exception) -> DataError:
    return DataError(
        f"{name} is not in {root!r} and could not be downloaded ({type(error).__name__}). "
        f"On a machine with internet run once with data.download true, or put {where} into "
        f"{root!r}"
    )


def _torchvision_cifar(cls_name: str, archive: str):
    def build(config: DataConfig, seed: int) -> SourceData:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        try:
            train = cls(config.root, train=True, download=config.download)
            test = cls(config.root, train=False, download=config.download)
        except RuntimeError as error:  # raised by torchvision when files are missing
            raise _download_error(cls_name, config.root, archive, error) from error
        except OSError as error:  # URLError and friends
            raise _download_error(cls_name, config.root, archive, error) from error
        return SourceData(list(train.classes), train, np.asarray(train.targets), test)

    return build


DATASETS.register("cifar10")(_torchvision_cifar("CIFAR10", "cifar-10-python.tar.gz"))
DATASETS.register("cifar100")(_torchvision_cifar("CIFAR100", "cifar-100-python.tar.gz"))


@DATASETS.register("fashion-mnist")
def fashion_mnist(config: DataConfig, seed: int) -> SourceData:
    """torchvision's FashionMNIST; uses the Debian package's files when present (offline)."""
    import torchvision

    from finessl.data import fetch

    raw = Path(config.root) / "FashionMNIST" / "raw"
    if fetch.debian_present() and not any(raw.glob("*-ubyte")):
        raw.mkdir(parents=True, exist_ok=True)
        for archive in fetch.DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"):
            with gzip.open(archive, "rb") as src, open(raw / archive.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        log.info("using Fashion-MNIST from %s", fetch.DEBIAN_FASHION_MNIST)
    try:
        train = torchvision.datasets.FashionMNIST(config.root, train=True, download=config.download)
        test = torchvision.datasets.FashionMNIST(config.root, train=False, download=config.download)
    except (RuntimeError, OSError) as error:
        raise _download_error(
            "Fashion-MNIST", config.root,
            "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "
            "(or apt-get install dataset-fashion-mnist)", error,
        ) from error
    return SourceData(list(train.classes), train, train.targets.numpy(), test)


class SyntheticImages(Dataset):
    """Class-dependent colour and stripe patterns plus noise: learnable, generated per index."""

    def __init__(self, num_classes: int, size: int, seed: int, image_size: int = 32) -> None:
        self.num_classes, self.size, self.seed, self.image_size = num_classes, size, seed, image_size
        self.targets = np.arange(size) % num_classes

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        label = int(self.targets[index])
        rng = np.random.default_rng([self.seed, index])
        size = self.image_size
        grid = np.broadcast_to(np.linspace(0, 1, size)[None, :], (size, size))
        phase = 2 * np.pi * (label + 1) * (grid if label % 2 else grid.T) + rng.uniform(0, 0.5)
        hue = np.array([np.sin(label), np.cos(label), np.sin(2 * label)]) * 0.35 + 0.5
        stripes = 0.5 + 0.5 * np.sin(phase)
        image = hue[None, None, :] * 0.6 + stripes[..., None] * 0.4
        image = image + rng.normal(0, 0.08, image.shape)
        pixels = (np.clip(image, 0, 1) * 255).astype(np.uint8)
        return Image.fromarray(pixels, "RGB"), label


@method_options("data", "synthetic", used_by=("synthetic",),
                aliases={"num_classes": "classes", "synthetic_size": "size",
                         "synthetic_test_size": "test_size"})
@dataclass
class SyntheticOptions:
    """The synthetic dataset's size (random images for tests and timings)."""

    classes: int = opt(10, "classes", ge=2, le=100_000)
    size: int = opt(200, "training images", ge=1, le=10**8)
    test_size: int = opt(100, "test images", ge=1, le=10**8)


@DATASETS.register("synthetic")
def synthetic(config: DataConfig, seed: int) -> SourceData:
    shape = config.options("synthetic")
    train = SyntheticImages(shape.classes, shape.size, seed=1000 + seed)
    test = SyntheticImages(shape.classes, shape.test_size, seed=2000 + seed)
    classes = [f"class_{k}" for k in range(shape.classes)]
    return SourceData(classes, train, train.targets, test)

