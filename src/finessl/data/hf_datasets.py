"""``data.name hf``: an image-classification dataset of Hugging Face ``datasets``.

``data.path`` is a Hub name (downloaded into the Hugging Face cache; offline it fails in
one line) or a local folder: one written by ``save_to_disk``, or an ``imagefolder``
(``<split>/<class>/*.png``). The labels are the ``ClassLabel`` feature's (``data.label_column``
to choose another column), the images the ``Image`` feature's. A ``DatasetDict``'s
``data.train_split`` and ``data.test_split`` are used as such; a row without a label
(``None`` or ``-1``) is unlabeled, and ``data.unlabeled_split`` adds a whole split as
unlabeled images. Needs the ``hf`` extra: ``pip install 'finessl[hf]'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from finessl.data.datasets import DATASETS, SourceData, to_rgb8
from finessl.errors import DataError
from finessl.options import method_options, opt

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import DataConfig


class HFImages(Dataset):
    """``(PIL image, label)`` rows of one split; ``labels`` overrides the column (-1 = none)."""

    def __init__(self, split, image_column: str, labels: np.ndarray) -> None:
        self.split, self.image_column, self.targets = split, image_column, labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.split[int(index)][self.image_column]
        if not hasattr(image, "convert"):
            raise DataError(f"row {index} of the hf dataset has no decodable image in column "
                            f"{self.image_column!r}")
        return to_rgb8(image), int(self.targets[index])


def _load(path: str):
    try:
        import datasets
    except ImportError:
        raise DataError("data.name hf needs the datasets package: pip install 'finessl[hf]'") from None
    folder = Path(path).expanduser()
    try:
        if folder.is_dir() and any((folder / name).is_file() for name in
                                   ("dataset_dict.json", "state.json", "dataset_info.json")):
            return datasets.load_from_disk(str(folder))
        if folder.is_dir():
            return datasets.load_dataset("imagefolder", data_dir=str(folder))
        return datasets.load_dataset(path)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as error:
        where = "this folder" if folder.is_dir() else "the Hugging Face Hub (offline? set " \
                                                      "HF_DATASETS_OFFLINE=0 and check the name)"
        raise DataError(f"data.path {path!r}: cannot load the dataset from {where} "
                        f"({str(error).splitlines()[0][:160]})") from None


def _columns(split, hf: HFOptions) -> tuple[str, str | None, list[str] | None]:
    """(image column, label column, class names) of a split, found from its features."""
    import datasets

    features = split.features
    image = hf.image_column or next((k for k, f in features.items()
                                         if isinstance(f, datasets.Image)), None)
    if image is None or image not in features:
        raise DataError(f"the hf dataset has no image column (columns: {', '.join(features)}); "
                        "set data.image_column")
    label = hf.label_column or next((k for k, f in features.items()
                                         if isinstance(f, datasets.ClassLabel)), None)
    if label is not None and label not in features:
        raise DataError(f"data.label_column {label!r} is not a column ({', '.join(features)})")
    names = features[label].names if label is not None and isinstance(
        features[label], datasets.ClassLabel) else None
    return image, label, names


def _labels(split, label: str | None, index: dict[str, int] | None) -> np.ndarray:
    """Class indices of a split's rows, -1 where a row has no label."""
    if label is None:
        return np.full(len(split), -1, np.int64)
    values = split[label]  # one column, without decoding the images
    if index is not None and values and isinstance(next((v for v in values if v is not None), 0), str):
        return np.asarray([index.get(v, -1) if v else -1 for v in values], np.int64)
    return np.asarray([-1 if v is None else int(v) for v in values], np.int64)


@method_options("data", "hf", used_by=("hf",),
                aliases={k: k for k in ("path", "train_split", "test_split", "unlabeled_split",
                                        "image_column", "label_column")})
@dataclass
class HFOptions:
    """Which Hugging Face dataset, which of its splits and columns."""

    path: str | None = opt(None, "a Hugging Face datasets name on the Hub, or a local folder "
                                 "(save_to_disk, or an imagefolder)")
    train_split: str = opt("train", "the training split")
    test_split: str | None = opt("test", "the test split (None or absent: no test set)")
    unlabeled_split: str | None = opt(None, "a split of unlabeled images (labels ignored)")
    image_column: str | None = opt(None, "the image column (None: the Image feature)")
    label_column: str | None = opt(None, "the label column (None: the ClassLabel feature)")


@DATASETS.register("hf")
def hf_dataset(config: DataConfig, seed: int) -> SourceData:
    hf = config.options("hf")
    if not hf.path:
        raise DataError("data.name hf needs data.path: a Hugging Face dataset name or a local "
                        "folder (save_to_disk or imagefolder)")
    loaded = _load(hf.path)
    splits = dict(loaded) if hasattr(loaded, "keys") else {hf.train_split: loaded}
    if hf.train_split not in splits:
        raise DataError(f"the hf dataset has no split {hf.train_split!r} (splits: "
                        f"{', '.join(splits)}); set data.train_split")
    train = splits[hf.train_split]
    image, label, names = _columns(train, hf)
    if names is None:  # a plain label column: its distinct values, sorted
        found = sorted({str(v) for v in train[label] if v not in (None, "", -1)}) if label else []
        if not found:
            raise DataError("the hf dataset's training split has no labels (no ClassLabel column); "
                            "set data.label_column")
        names = found
    index = {name: k for k, name in enumerate(names)}
    parts, targets = [HFImages(train, image, _labels(train, label, index))], []
    targets.append(parts[0].targets)
    if hf.unlabeled_split:
        if hf.unlabeled_split not in splits:
            raise DataError(f"data.unlabeled_split {hf.unlabeled_split!r} is not a split "
                            f"({', '.join(splits)})")
        extra = splits[hf.unlabeled_split]
        extra_image = image if image in extra.features else _columns(extra, hf)[0]
        parts.append(HFImages(extra, extra_image, np.full(len(extra), -1, np.int64)))
        targets.append(parts[-1].targets)
    test_given = bool(hf.test_split) and hf.test_split in splits
    if test_given:
        test_split = splits[hf.test_split]
        test = HFImages(test_split, image, _labels(test_split, label, index))
        if (test.targets < 0).any():
            raise DataError(f"the hf dataset's {hf.test_split!r} split has rows without a label; "
                            "every test image needs one")
    else:
        test = HFImages(train.select([]), image, np.zeros(0, np.int64))
    all_targets = np.concatenate(targets)
    source = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    return SourceData(list(names), source, all_targets, test, labels_given=False, test_given=test_given)
