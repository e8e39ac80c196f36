"""Configuration: presets, dotted overrides, validation."""

import pytest

from finessl.cli import parse_overrides
from finessl.config import apply_overrides, config_from_dict, load_preset, preset_names
from finessl.errors import ConfigError

REQUIRED_KEYS = ["model.backbone", "model.pretrained", "model.peft", "algorithm.name", "data.name",
                 "data.root", "data.labels_per_class", "train.steps", "train.batch_size",
                 "train.lr", "seed"]


def test_required_presets_exist_with_reference_recipe():
    names = preset_names()
    for name in ["cifar10-n1", "cifar10-n2", "cifar10-n4", "cifar100-n4", "cifar100-n25",
                 "cifar100-n100", "demo", "smoke"]:
        assert name in names
    cfg = load_preset("cifar100-n4")
    assert (cfg.model.backbone, cfg.model.pretrained, cfg.model.peft) == ("ViT-B-16", "openai",
                                                                          "vpt-deep")
    assert cfg.model.options("vpt").tokens == 50 and cfg.data.labels_per_class == 4
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.steps) == (0.03, 32, 15000)
    assert cfg.algorithm.unlabeled_weight == 3.0 and cfg.algorithm.threshold == 0.7
    n1 = load_preset("cifar10-n1")
    assert n1.train.batch_size == 8 and n1.algorithm.unlabeled_weight == 1.0
    assert load_preset("cifar10-n2").train.batch_size == 16


def test_required_dotted_keys_can_be_overridden():
    values = {"model.backbone": "tiny-vit", "model.pretrained": "none", "model.peft": "bitfit",
              "algorithm.name": "fixmatch", "data.name": "synthetic", "data.root": "/tmp/x",
              "data.labels_per_class": "2", "train.steps": "12", "train.batch_size": "4",
              "train.lr": "0.1", "seed": "5"}
    assert sorted(values) == sorted(REQUIRED_KEYS)
    cfg = apply_overrides(load_preset("smoke"), values)
    assert cfg.train.steps == 12 and cfg.train.lr == 0.1 and cfg.seed == 5
    assert cfg.model.pretrained is None and cfg.data.labels_per_class == 2


def test_parse_overrides_forms():
    assert parse_overrides(["--train.steps", "10", "--model.peft=bitfit"]) == {
        "train.steps": "10", "model.peft": "bitfit"}
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--train.steps"])


def test_unknown_keys_and_bad_types_are_clear():
    with pytest.raises(ConfigError, match="unknown config key 'train.step'.*train.steps"):
        apply_overrides(load_preset("smoke"), {"train.step": "3"})
    with pytest.raises(ConfigError, match="expects int"):
        apply_overrides(load_preset("smoke"), {"train.steps": "many"})
    with pytest.raises(ConfigError, match="unknown preset 'smok'.*smoke"):
        load_preset("smok")
    with pytest.raises(ConfigError):
        config_from_dict({"modle": {"backbone": "x"}})


def test_roundtrip_through_yaml(tmp_path):
    from finessl.config import load_config

    cfg = load_preset("demo")
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert load_config(tmp_path / "c.yaml") == cfg
