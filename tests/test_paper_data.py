"""The paper's datasets on small fake copies of their real on-disk layouts, and every preset."""

import numpy as np
import pytest

from finessl.config import DataConfig, apply_overrides, load_preset, preset_names
from finessl.data import build_ssl_data, load_source
from finessl.errors import DataError

from helpers import make_food101, make_imagenet, make_semi_aves, make_stl10

MEAN = STD = (0.5, 0.5, 0.5)


def test_food101(tmp_path):
    make_food101(tmp_path)
    source = load_source(DataConfig(name="food101", root=str(tmp_path), download=False), 0)
    assert source.classes == ["apple_pie", "sushi", "tacos"]
    assert len(source.train) == 15 and len(source.test) == 6
    assert np.bincount(source.train_targets).tolist() == [5, 5, 5]
    data = build_ssl_data(DataConfig(name="food101", root=str(tmp_path), labels_per_class=2,
                                     download=False), 32, MEAN, STD, seed=0)
    assert len(data.labeled) == 6 and data.labeled[0][0].shape == (3, 32, 32)


def test_semi_aves_with_and_without_ood(tmp_path):
    make_semi_aves(tmp_path)
    cfg = DataConfig(name="semi-aves", root=str(tmp_path), labels_per_class=None)
    data = build_ssl_data(cfg, 32, MEAN, STD, seed=0)
    assert data.num_classes == 3 and len(data.labeled) == 9
    assert len(data.unlabeled) == 9 + 4 and len(data.test) == 6
    cfg.out_of_distribution = True
    assert len(build_ssl_data(cfg, 32, MEAN, STD, seed=0).unlabeled) == 9 + 4 + 3
    with pytest.raises(DataError, match="l_train_val.txt.*missing"):
        load_source(DataConfig(name="semi-aves", root=str(tmp_path / "empty")), 0)


def test_imagenet_fractions_and_subset_file(tmp_path):
    make_imagenet(tmp_path)
    cfg = DataConfig(name="imagenet", root=str(tmp_path), labels_per_class=None, label_fraction=0.2)
    data = build_ssl_data(cfg, 16, MEAN, STD, seed=0)
    assert len(data.labeled) == 4  # 20% of 10 per class, 2 classes
    assert len(data.unlabeled) == 20 and len(data.test) == 4
    (tmp_path / "1percent.txt").write_text("n01440764_3.JPEG\nn01443537_7.JPEG\n")
    cfg = DataConfig(name="imagenet", root=str(tmp_path), labels_per_class=None,
                     subset_file=str(tmp_path / "1percent.txt"))
    source = load_source(cfg, 0)
    named = [source.train.paths[i] for i in np.flatnonzero(source.train_targets >= 0)]
    assert sorted(p.split("/")[-1] for p in named) == ["n01440764_3.JPEG", "n01443537_7.JPEG"]
    with pytest.raises(DataError, match="train.*missing"):
        load_source(DataConfig(name="imagenet", root=str(tmp_path / "none"), label_fraction=0.1), 0)


def test_stl10_binary_layout(tmp_path):
    make_stl10(tmp_path)
    cfg = DataConfig(name="stl10", root=str(tmp_path), labels_per_class=2, download=False)
    source = load_source(cfg, 0)
    assert source.classes[0] == "airplane" and len(source.train) == 27
    assert (source.train_targets[20:] == -1).all()
    image, label = source.test[3]
    assert image.size == (96, 96) and label == 3
    data = build_ssl_data(cfg, 32, MEAN, STD, seed=0)
    assert len(data.labeled) == 20 and len(data.unlabeled) == 27


def test_long_tailed_cifar_presets_split():
    cfg = load_preset("cifar100-lt-r10")
    assert (cfg.data.labeled_imbalance, cfg.data.unlabeled_imbalance) == (10.0, 10.0)
    assert load_preset("cifar100-lt-r20").data.labeled_imbalance == 20.0


FAKE = {"cifar10": None, "cifar100": None, "food101": make_food101, "semi-aves": make_semi_aves,
        "imagenet": make_imagenet, "fashion-mnist": None, "synthetic": None}


@pytest.mark.parametrize("preset", [p for p in preset_names() if p not in ("demo",)])
def test_every_preset_builds_config_and_data_pipeline(preset, tmp_path):
    cfg = load_preset(preset)
    name = cfg.data.name
    overrides = {"model.backbone": "tiny-vit", "model.pretrained": "none", "model.image_size": "32",
                 "data.root": str(tmp_path), "data.download": "false", "data.num_workers": "0"}
    if name in ("cifar10", "cifar100"):  # torchvision checks CIFAR's md5: same shape, synthetic
        overrides.update({"data.name": "synthetic", "data.synthetic_size": "50000",
                          "data.num_classes": "10" if name == "cifar10" else "100"})
    elif FAKE.get(name):
        FAKE[name](tmp_path)
        if name == "food101":
            overrides["data.labels_per_class"] = str(min(cfg.data.labels_per_class, 5))
    cfg = apply_overrides(cfg, overrides)
    from finessl.algorithms import algorithm_class
    from finessl.models import build_model

    views = algorithm_class(cfg.algorithm).needs(cfg.algorithm).strong_views
    data = build_ssl_data(cfg.data, 32, MEAN, STD, cfg.seed, views)
    item = data.unlabeled[0]
    assert item["weak"].shape == (3, 32, 32) and len(item["strong"]) == views
    model = build_model(cfg.model, data.num_classes, classes=data.classes)
    assert model.num_classes == data.num_classes
