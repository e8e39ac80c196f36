"""``data.name hf``: a Hugging Face dataset saved to disk (and an imagefolder) trains,
with its ClassLabel names, its train / test splits, unlabeled rows and an unlabeled split."""

import numpy as np
import pytest
from PIL import Image

from finessl.cli import main
from finessl.config import apply_overrides, load_preset
from finessl.data.datasets import load_source
from finessl.errors import DataError

datasets = pytest.importorskip("datasets")


def images(count: int, seed: int):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A DatasetDict on disk: train (10 rows, two without a label), test (4), extra (3)."""
    features = datasets.Features({"img": datasets.Image(),
                                  "fine": datasets.ClassLabel(names=["ant", "bee", "cow"])})
    train = datasets.Dataset.from_dict(
        {"img": images(10, 0), "fine": [0, 1, 2, 0, 1, 2, 0, 1, None, -1]}, features=features)
    test = datasets.Dataset.from_dict({"img": images(4, 1), "fine": [2, 1, 0, 2]}, features=features)
    extra = datasets.Dataset.from_dict({"img": images(3, 2)},
                                       features=datasets.Features({"img": datasets.Image()}))
    folder = tmp_path_factory.mktemp("hf") / "bugs"
    datasets.DatasetDict({"train": train, "test": test, "extra": extra}).save_to_disk(str(folder))
    return folder


def config(**overrides):
    return apply_overrides(load_preset("smoke"), {"data.name": "hf", **overrides}).data


def test_a_saved_dataset_gives_its_classes_splits_and_unlabeled_rows(saved):
    source = load_source(config(**{"data.path": str(saved)}), 0)
    assert source.classes == ["ant", "bee", "cow"]
    assert source.train_targets.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, -1, -1]
    assert len(source.test) == 4 and source.test_given
    image, label = source.test[0]
    assert image.mode == "RGB" and image.size == (20, 20) and label == 2
    with_extra = load_source(config(**{"data.path": str(saved), "data.unlabeled_split": "extra"}), 0)
    assert with_extra.train_targets.tolist()[-3:] == [-1, -1, -1] and len(with_extra.train) == 13
    assert with_extra.train[12][1] == -1
    no_test = load_source(config(**{"data.path": str(saved), "data.test_split": "none"}), 0)
    assert not no_test.test_given and len(no_test.test) == 0


def test_clear_errors_for_a_missing_split_column_or_path(saved, tmp_path):
    with pytest.raises(DataError, match="no split 'training'"):
        load_source(config(**{"data.path": str(saved), "data.train_split": "training"}), 0)
    with pytest.raises(DataError, match="data.label_column 'coarse' is not a column"):
        load_source(config(**{"data.path": str(saved), "data.label_column": "coarse"}), 0)
    with pytest.raises(DataError, match="needs data.path"):
        load_source(config(), 0)


def test_an_imagefolder_loads_with_its_folder_names_as_classes(tmp_path):
    for split, count in (("train", 3), ("test", 1)):
        for name in ("cat", "dog"):
            for i, picture in enumerate(images(count, hash(name) % 100)):
                path = tmp_path / "pets" / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                picture.save(path)
    source = load_source(config(**{"data.path": str(tmp_path / "pets")}), 0)
    assert source.classes == ["cat", "dog"] and sorted(source.train_targets.tolist()) == [0, 0, 0, 1, 1, 1]
    assert len(source.test) == 2


def test_training_on_a_saved_hf_dataset(saved, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--data.name", "hf", "--data.path", str(saved),
                 "--data.labels_per_class", "1", "--train.steps", "2", "--train.steps_per_epoch", "2",
                 "--train.tensorboard", "false", "--output", str(out)]) == 0
    assert (out / "final.json").is_file()
