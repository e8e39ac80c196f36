"""``data.extra_labels``: labels you added later (``path,label`` rows) on top of any dataset.

A row names an image by its file path, or — for datasets held in memory (CIFAR,
Fashion-MNIST, ...) — by ``DATASET:INDEX``, the identifier ``finessl suggest`` writes. An
image of the training pool becomes labeled; a file from elsewhere is added. The labels are
class names of the run. By default the newly labeled images leave the unlabeled pool
(``data.extra_labels_in_unlabeled`` keeps them there).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset

from finessl.data import label_studio
from finessl.data.datasets import FileImages, SourceData, canonical_paths, probe_image
from finessl.data.label_studio import ImageLinks
from finessl.data.path_list import PathList
from finessl.errors import DataError, shown

log = logging.getLogger(__name__)


def item_id(dataset_name: str, source: SourceData, index: int) -> str:
    """How an image of the training pool is named in suggestion and label lists: its
    absolute path (read back the same from any working directory), or ``DATASET:INDEX``."""
    paths = getattr(source.train, "paths", None)
    return os.path.abspath(paths[index]) if paths is not None else f"{dataset_name}:{index}"


def resolve_listed(name: str, listing: Path) -> Path:
    """A path written in a CSV list: absolute as it is, relative to the CSV's folder (the
    rule of every list finessl reads). A relative path found only from the working
    directory is ambiguous, and an error that says so."""
    path = Path(name)
    if path.is_absolute():
        return path
    beside = listing.parent / path
    if not beside.exists() and path.exists():
        raise DataError(f"{listing}: {name!r} is not next to the list (paths in a CSV are relative "
                        "to the CSV's folder) but exists relative to the working directory; write "
                        f"its absolute path ({path.resolve()})")
    return beside


@dataclass
class ExtraLabels:
    """Training-pool indices (of the possibly extended source) and their class indices."""

    source: SourceData
    indices: np.ndarray
    labels: np.ndarray
    first_added: int  # indices from here on are files added by the list (not in the pool)


def read_label_rows(path: Path, studio: ImageLinks | None = None,
                    conflicts: str = "majority") -> list[tuple[str, str]]:
    """``(image, label)`` rows of a label list (a header row is optional), or of a Label
    Studio export (its images named as ``studio`` says)."""
    if path.is_dir():
        raise DataError(f"data.extra_labels {str(path)!r} is a folder; give a CSV file")
    if not path.is_file():
        raise DataError(f"data.extra_labels {str(path)!r} does not exist")
    if label_studio.is_export(path):
        return label_studio.read_export(path, studio or ImageLinks(), conflicts)
    rows = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.reader(handle):
                if not row or row[0].strip().lower() in ("path", "image", "id"):
                    continue
                if len(row) < 2 or not row[1].strip():
                    raise DataError(f"data.extra_labels {str(path)!r}: the row for {shown(row[0])} has "
                                    "no label")
                rows.append((row[0].strip(), row[1].strip()))
    except (UnicodeDecodeError, csv.Error, ValueError) as error:
        raise DataError(f"data.extra_labels {str(path)!r} is not a readable UTF-8 CSV "
                        f"({str(error)[:120]})") from None
    if not rows:
        raise DataError(f"data.extra_labels {str(path)!r} has no labeled rows (path,label)")
    return rows


def apply_extra_labels(path: Path, source: SourceData, dataset_name: str,
                       studio: ImageLinks | None = None, conflicts: str = "majority") -> ExtraLabels:
    rows = read_label_rows(path, studio, conflicts)
    classes = {name: k for k, name in enumerate(source.classes)}
    pool_paths = getattr(source.train, "paths", None) or []
    known = {key: i for i, key in enumerate(canonical_paths(pool_paths))}
    prefix = f"{dataset_name}:"
    indices, labels, new_paths, new_labels = [], [], [], []
    listed: dict[int | str, tuple[str, str]] = {}  # image -> (as written, label)
    for name, label in rows:
        if label not in classes:
            raise DataError(f"data.extra_labels: {shown(label)} (for {shown(name)}) is not a class of "
                            f"this run; the classes are {', '.join(source.classes[:20])}")
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            index = int(name[len(prefix):])
            if index >= len(source.train):
                raise DataError(f"data.extra_labels: {name} is beyond the {len(source.train)} images")
            key: int | str = index
        else:
            file = resolve_listed(name, path)
            key = canonical_paths([file])[0]
            if key not in known and key not in listed:
                probe_image(file)
                new_paths.append(file)
                new_labels.append(classes[label])
        if key in listed:
            earlier, before = listed[key]
            how = "with the same label" if before == label else f"as {before!r} and as {label!r}"
            raise DataError(f"data.extra_labels {str(path)!r} lists one image twice {how} "
                            f"({shown(earlier)}, {shown(name)}); list each image once")
        listed[key] = (name, label)
        if isinstance(key, int) or key in known:
            indices.append(key if isinstance(key, int) else known[key])
            labels.append(classes[label])
    start = len(source.train)
    if new_paths:
        added = FileImages(new_paths, new_labels)
        train = ConcatDataset([source.train, added])
        if getattr(source.train, "paths", None) is not None:  # still a list of files
            train.paths = PathList.of(source.train.paths) + added.paths  # type: ignore[attr-defined]
        source = SourceData(source.classes, train,
                            np.concatenate([source.train_targets, np.full(len(added), -1)]),
                            source.test, source.labels_given)
        indices += list(range(start, start + len(added)))
        labels += new_labels
    return ExtraLabels(source, np.asarray(indices, dtype=np.int64), np.asarray(labels, dtype=np.int64),
                       start)


def listed_indices(path: Path, source: SourceData, dataset_name: str, what: str) -> np.ndarray:
    """Training-pool indices of the images a CSV lists in its first column (path or
    ``DATASET:INDEX``; paths relative to the CSV); images not in the pool are ignored."""
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r} does not exist")
    pool = getattr(source.train, "paths", None) or []
    known = {key: i for i, key in enumerate(canonical_paths(pool))}
    prefix = f"{dataset_name}:"
    found, missing = [], 0
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.reader(handle):
                name = row[0].strip() if row else ""
                if not name or name.lower() in ("path", "image", "id"):
                    continue
                if name.startswith(prefix) and name[len(prefix):].isdigit():
                    index: int | None = int(name[len(prefix):])
                    index = index if index < len(source.train) else None
                else:
                    index = known.get(canonical_paths([resolve_listed(name, path)])[0])
                if index is None:
                    missing += 1
                else:
                    found.append(index)
    except (UnicodeDecodeError, csv.Error, ValueError) as error:
        raise DataError(f"{what} {str(path)!r} is not a readable UTF-8 CSV ({str(error)[:120]})") from None
    if missing:
        log.warning("%s: %d listed image(s) are not in this training data", what, missing)
    return np.unique(np.asarray(found, dtype=np.int64))


def check_agrees(extra: ExtraLabels, labeled: np.ndarray, dataset_name: str) -> None:
    """An extra label may add a label, never contradict one the data already gives: the
    labeled split's label, or any label of a source that fixes its labels (a class folder,
    a labeled CSV row)."""
    source = extra.source
    given = source.train_targets
    fixed = np.ones(len(given), dtype=bool) if source.labels_given else np.isin(np.arange(len(given)),
                                                                                labeled)
    for index, label in zip(extra.indices.tolist(), extra.labels.tolist()):
        if index < extra.first_added and fixed[index] and 0 <= given[index] != label:
            raise DataError(
                f"data.extra_labels labels {item_id(dataset_name, source, index)} as "
                f"{source.classes[label]!r}, but the data already labels it "
                f"{source.classes[int(given[index])]!r}; correct one of the two")
