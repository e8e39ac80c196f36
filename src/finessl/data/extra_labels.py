"""``data.extra_labels``: labels you added later (``path,label`` rows) on top of any dataset.

A row names an image by its file path, or — for datasets held in memory (CIFAR,
Fashion-MNIST, ...) — by ``DATASET:INDEX``, the identifier ``finessl suggest`` writes. An
image of the training pool becomes labeled; a file from elsewhere is added. The labels are
class names of the run. By default the newly labeled images leave the unlabeled pool
(``data.extra_labels_in_unlabeled`` keeps them there).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset

from finessl.data.datasets import FileImages, SourceData, probe_image
from finessl.errors import DataError


def item_id(dataset_name: str, source: SourceData, index: int) -> str:
    """How an image of the training pool is named in suggestion and label lists."""
    paths = getattr(source.train, "paths", None)
    return str(paths[index]) if paths is not None else f"{dataset_name}:{index}"


@dataclass
class ExtraLabels:
    """Training-pool indices (of the possibly extended source) and their class indices."""

    source: SourceData
    indices: np.ndarray
    labels: np.ndarray


def apply_extra_labels(path: Path, source: SourceData, dataset_name: str) -> ExtraLabels:
    if not path.is_file():
        raise DataError(f"data.extra_labels {str(path)!r} does not exist")
    rows = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.reader(handle):
                if not row or row[0].strip().lower() in ("path", "image", "id"):
                    continue
                if len(row) < 2 or not row[1].strip():
                    raise DataError(f"data.extra_labels {str(path)!r}: the row for {row[0]!r} has no label")
                rows.append((row[0].strip(), row[1].strip()))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"data.extra_labels {str(path)!r} is not a readable UTF-8 CSV ({error})") from None
    classes = {name: k for k, name in enumerate(source.classes)}
    known = {str(Path(p).resolve()): i for i, p in enumerate(getattr(source.train, "paths", []) or [])}
    prefix = f"{dataset_name}:"
    indices, labels, new_paths, new_labels = [], [], [], []
    for name, label in rows:
        if label not in classes:
            raise DataError(f"data.extra_labels: {label!r} (for {name}) is not a class of this run; "
                            f"the classes are {', '.join(source.classes[:20])}")
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            index = int(name[len(prefix):])
            if index >= len(source.train):
                raise DataError(f"data.extra_labels: {name} is beyond the {len(source.train)} images")
            indices.append(index)
            labels.append(classes[label])
            continue
        file = Path(name) if Path(name).is_absolute() else path.parent / name
        resolved = str(file.resolve())
        if resolved in known:
            indices.append(known[resolved])
            labels.append(classes[label])
        else:
            probe_image(file)
            new_paths.append(file)
            new_labels.append(classes[label])
    if new_paths:
        start = len(source.train)
        added = FileImages(new_paths, new_labels)
        train = ConcatDataset([source.train, added])
        if getattr(source.train, "paths", None) is not None:  # still a list of files
            train.paths = list(source.train.paths) + added.paths  # type: ignore[attr-defined]
        source = SourceData(source.classes, train,
                            np.concatenate([source.train_targets, np.full(len(added), -1)]),
                            source.test, source.labels_given)
        indices += list(range(start, start + len(added)))
        labels += new_labels
    if len(set(indices)) != len(indices):
        raise DataError(f"data.extra_labels {str(path)!r} lists an image twice")
    return ExtraLabels(source, np.asarray(indices, dtype=np.int64), np.asarray(labels, dtype=np.int64))
