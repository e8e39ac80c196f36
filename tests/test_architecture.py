"""How a run is put together: what an algorithm declares, what the builder makes of it, and
the one place each fact is derived (configuration checks, fit check, moved settings)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest
import torch

import finessl
from finessl import builder, trained
from finessl import config as config_module
from finessl.algorithms import ALGORITHMS, Collaboration, Needs
from finessl.algorithms.fixmatch import FixMatch
from finessl.cli import main
from finessl.config import (
    METHOD_PACKAGES,
    apply_overrides,
    load_config,
    load_preset,
    make_section,
    options_of,
)
from finessl.engine import callbacks
from finessl.engine.trainer import Trainer
from finessl.errors import AdapterMismatch, ConfigError
from finessl.rundir import RunDir

SMOKE = {"train.steps": "2", "train.steps_per_epoch": "2", "train.tensorboard": "false"}


class Mentored(FixMatch):
    """A test algorithm with a collaborator: FixMatch that asks for a "mentor"."""

    name = "mentored"  # what ALGORITHMS.register("mentored") would set
    made_with: list[Collaboration] = []

    @classmethod
    def needs(cls, config) -> Needs:
        return dataclasses.replace(super().needs(config), strong_views=3, unlabeled_ratio=2,
                                   collaborators={"mentor": cls.make_mentor})

    @classmethod
    def make_mentor(cls, context: Collaboration) -> str:
        cls.made_with.append(context)
        return f"mentor of {len(context.classes)} classes"

    def __init__(self, *args, mentor: str, **context) -> None:
        super().__init__(*args, **context)
        self.mentor = mentor


@pytest.fixture
def mentored(monkeypatch):
    """``algorithm.name mentored``, registered for this test only."""
    monkeypatch.setitem(ALGORITHMS._items, "mentored", Mentored)
    Mentored.made_with = []
    return apply_overrides(load_preset("smoke"), {**SMOKE, "algorithm.name": "mentored"})


def test_an_algorithm_with_a_collaborator_is_one_class_and_its_registration(mentored, tmp_path):
    pieces = builder.build_run(mentored)
    assert pieces.algorithm.mentor == "mentor of 4 classes"
    (made,) = Mentored.made_with
    assert made.classes == pieces.data.classes and made.backbone is pieces.model.backbone
    assert made.rebuild is trained.rebuild and made.config is mentored.algorithm
    # the data pipeline makes the views the algorithm declared, not the configured ones
    assert len(pieces.data.unlabeled[0]["strong"]) == 3
    trainer = Trainer(mentored, pieces.model, pieces.algorithm, pieces.data)
    batch = mentored.train.batch_size
    assert trainer.images_per_step == batch + 2 * batch * (1 + 3)
    first = next(trainer.batches(0, 0))
    assert first.weak.shape[0] == 2 * batch and len(first.strong) == 3
    # a ready-made collaborator is used as given
    given = builder.build_run(mentored, collaborators={"mentor": "mine"})
    assert given.algorithm.mentor == "mine" and len(Mentored.made_with) == 1
    # and the whole run needs nothing outside the class and its registration
    final = finessl.train(mentored, tmp_path / "run")
    assert final["algorithm"] == "mentored" and final["steps"] == 2


def test_the_method_packages_never_import_the_configuration():
    """``config`` finds the methods' settings by importing the method packages; they (and
    ``options``, where they register) must not import ``config`` back: a cycle made at run
    time, which static tools do not see."""
    packages = ", ".join(repr(p) for p in ("finessl.options", *METHOD_PACKAGES))
    code = (f"import importlib, sys; [importlib.import_module(p) for p in ({packages})]; "
            "print(sorted(m for m in sys.modules if m.startswith('finessl.config')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=300)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_train_validates_once_and_reads_a_resumed_run_once(tmp_path, monkeypatch, capsys):
    counts = {"validate": 0, "check_can_resume": 0, "read_config": 0}
    validate = config_module.validate_config

    def counted_validate(config):
        counts["validate"] += 1
        return validate(config)

    monkeypatch.setattr(config_module, "validate_config", counted_validate)
    monkeypatch.setattr(builder, "validate_config", counted_validate)
    # the model card, written once training is over, reads the finished run's files itself
    monkeypatch.setattr(finessl.run, "_card", lambda run: None)
    out = tmp_path / "run"
    argv = ["train", "--preset", "smoke", "--output", str(out)]
    argv += [token for key, value in SMOKE.items() for token in (f"--{key}", value)]
    assert main(argv) == 0
    assert counts["validate"] == 1  # the preset with its overrides, nothing after
    for name in ("check_can_resume", "read_config"):
        original = getattr(RunDir, name)

        def counted(self, _original=original, _name=name):
            counts[_name] += 1
            return _original(self)

        monkeypatch.setattr(RunDir, name, counted)
    (out / RunDir.FINAL).unlink()  # a run that stopped after its last checkpoint
    counts["validate"] = 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--train.log_every", "1"]) == 0
    # checked and read (so validated) once, validated once more with the override
    assert counts["check_can_resume"] == 1 and counts["read_config"] == 1
    assert counts["validate"] == 2


def test_loggers_are_a_registry_matching_the_configuration_choices():
    from finessl.config import TrainConfig

    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "loggers")
    assert set(field.metadata["choices"]) == set(callbacks.LOGGERS.names())


def test_the_fit_check_names_why_and_loads_only_what_fits():
    model = builder.build_run(load_preset("smoke")).model
    state = {k: v.clone() + 1 for k, v in model.trainable_state_dict().items()}
    name = next(iter(state))
    with pytest.raises(AdapterMismatch, match="does not fit"):
        model.load_trainable({**state, name: torch.zeros(3)})
    assert not torch.equal(model.trainable_state_dict()[name], state[name])  # nothing loaded
    with pytest.raises(AdapterMismatch, match="backbone"):
        model.load_trainable(state, {"backbone": "ViT-B-16"})
    model.load_trainable(state, {"backbone": "tiny-vit"})
    assert torch.equal(model.trainable_state_dict()[name], state[name])


def every_moved_key():
    for section in ("model", "data", "algorithm"):
        for method, entry in options_of(section).items():
            for old, new in entry.aliases.items():
                yield section, method, old, new


@pytest.mark.parametrize("section, method, old, new", list(every_moved_key()))
def test_moved_settings_keep_their_old_keys(section, method, old, new, tmp_path):
    """A key that moved into a section (``data.csv`` -> ``data.csv.train``) still works on the
    command line, in YAML, as an attribute and as a constructor argument."""
    default = getattr(options_of(section)[method].cls(), new)
    value = _other_value(section, method, new, default)
    # an algorithm's own settings may only be set for it
    base = {"algorithm.name": method} if method in ALGORITHMS else {}
    config = apply_overrides(load_preset("smoke"), {**base, f"{section}.{old}": str(value)})
    assert getattr(getattr(config, section).options(method), new) == value
    name = f"  name: {method}\n" if base else ""
    (tmp_path / "c.yaml").write_text(f"{section}:\n{name}  {old}: {value}\n")
    assert getattr(getattr(load_config(tmp_path / "c.yaml"), section).options(method), new) == value
    part = make_section(section)
    setattr(part, old, value)
    assert getattr(part, old) == value == getattr(part.options(method), new)
    built = type(part)(**{old: value})
    assert getattr(built.options(method), new) == value
    with pytest.raises(AttributeError, match="no setting"):
        part.no_such_setting = 1


def _other_value(section: str, method: str, key: str, default):
    """A valid value other than the default, by the field's type and choices."""
    cls = options_of(section)[method].cls
    field = next(f for f in dataclasses.fields(cls) if f.name == key)
    choices = [c for c in (field.metadata.get("choices") or ()) if c != default and c is not None]
    if choices:
        return choices[0]
    if default is None:  # by the declared type
        hint = str(typing.get_type_hints(cls)[key])
        return 0.5 if "float" in hint else 2 if "int" in hint else "elsewhere"
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return 0.25 if default != 0.25 else 0.5
    if isinstance(default, list):
        return default
    return "elsewhere"


def test_a_file_setting_one_value_twice_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  num_classes: 5\n  synthetic: {classes: 4}\n")
    with pytest.raises(ConfigError, match="'data.synthetic.classes' and 'data.num_classes'|"
                                          "'data.num_classes' and 'data.synthetic.classes'"):
        load_config(path)
    # an override of the other spelling is an override, not a clash
    once = tmp_path / "once.yaml"
    once.write_text("data:\n  num_classes: 5\n")
    assert load_config(once, {"data.synthetic.classes": "6"}).data.options("synthetic").classes == 6

