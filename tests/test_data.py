"""Dataset loaders on small real on-disk layouts built here, and their clear errors."""

import numpy as np
import pytest
import torch

from finessl.config import DataConfig
from finessl.data import build_ssl_data, load_source
from finessl.data.fetch import DEBIAN_FASHION_MNIST
from finessl.errors import ConfigError, DataError

from helpers import make_image_folder, write_image

MEAN = STD = (0.5, 0.5, 0.5)


def test_folder_dataset(tmp_path):
    make_image_folder(tmp_path)
    cfg = DataConfig(name="folder", root=str(tmp_path), labels_per_class=None, num_workers=0)
    data = build_ssl_data(cfg, 32, MEAN, STD, seed=0, strong_views=2)
    assert data.classes == ["cat", "dog"]
    assert len(data.labeled) == 8 and len(data.unlabeled) == 8 + 6 and len(data.test) == 4
    item = data.unlabeled[len(data.unlabeled) - 1]
    s1, s2 = item["strong"]
    assert item["weak"].shape == s1.shape == s2.shape == (3, 32, 32) and item["label"] == -1
    assert item["index"] == len(data.unlabeled) - 1 and item["skipped"] == 0
    image, y = data.labeled[0]
    assert image.shape == (3, 32, 32) and y in (0, 1)
    two = build_ssl_data(DataConfig(name="folder", root=str(tmp_path), labels_per_class=2),
                         32, MEAN, STD, seed=0)
    assert len(two.labeled) == 4


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_source(DataConfig(name="folder", root=str(tmp_path / "missing")), 0)
    make_image_folder(tmp_path)
    (tmp_path / "labeled" / "bird").mkdir()
    with pytest.raises(DataError, match="class folder .*bird.* has no images"):
        load_source(DataConfig(name="folder", root=str(tmp_path)), 0)


def test_corrupt_image_is_named(tmp_path):
    make_image_folder(tmp_path)
    bad = tmp_path / "labeled" / "cat" / "broken.png"
    bad.write_bytes(b"not an image")
    source = load_source(DataConfig(name="folder", root=str(tmp_path)), 0)
    index = source.train.paths.index(str(bad))
    with pytest.raises(DataError, match="broken.png.*not a readable image"):
        source.train[index]


def test_csv_dataset(tmp_path):
    rows = ["path,label"]
    for i in range(6):
        write_image(tmp_path / "img" / f"{i}.png", i % 2, seed=i)
        rows.append(f"img/{i}.png,{'ab'[i % 2] if i < 4 else ''}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    for i in range(2):  # the test images are not training images
        write_image(tmp_path / "img" / f"t{i}.png", i, seed=50 + i)
    (tmp_path / "test.csv").write_text("img/t0.png,a\nimg/t1.png,b\n")
    cfg = DataConfig(name="csv", csv=str(tmp_path / "train.csv"),
                     test_csv=str(tmp_path / "test.csv"), labels_per_class=None)
    source = load_source(cfg, 0)
    assert source.classes == ["a", "b"] and source.train_targets.tolist() == [0, 1, 0, 1, -1, -1]
    data = build_ssl_data(cfg, 16, MEAN, STD, seed=0)
    assert len(data.labeled) == 4 and len(data.unlabeled) == 6 and len(data.test) == 2
    (tmp_path / "bad.csv").write_text("img/0.png,zebra\n")
    with pytest.raises(DataError, match="zebra"):
        load_source(DataConfig(name="csv", csv=str(tmp_path / "train.csv"),
                               test_csv=str(tmp_path / "bad.csv")), 0)


def test_synthetic_is_deterministic():
    cfg = DataConfig(name="synthetic", num_classes=3, synthetic_size=30, labels_per_class=2)
    a = build_ssl_data(cfg, 32, MEAN, STD, seed=0)
    b = build_ssl_data(cfg, 32, MEAN, STD, seed=0)
    assert np.array_equal(a.labeled_indices, b.labeled_indices)
    torch.manual_seed(0)
    assert torch.equal(a.test[0][0], b.test[0][0])


def test_unknown_dataset_name():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar1000'"):
        load_source(DataConfig(name="cifar1000"), 0)


def test_cifar_offline_error(tmp_path):
    with pytest.raises(DataError, match="CIFAR10 is not in .* could not be downloaded"):
        load_source(DataConfig(name="cifar10", root=str(tmp_path), download=False), 0)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package(tmp_path):
    source = load_source(DataConfig(name="fashion-mnist", root=str(tmp_path)), 0)
    assert len(source.train) == 60000 and len(source.test) == 10000
    assert np.bincount(source.train_targets).tolist() == [6000] * 10
    assert source.classes[0] == "T-shirt/top"
