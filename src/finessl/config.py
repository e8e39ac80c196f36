"""Run configuration: typed dataclasses, presets shipped as YAML, dotted CLI overrides.

A run is fully described by one ``Config``; ``config.yaml`` in the run directory is its
resolved form, so ``load_config(run_dir / "config.yaml")`` rebuilds the exact run.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from finessl.errors import ConfigError, shown
from finessl.options import MethodOptions, opt, registered
from finessl.registry import unknown_name_message


class _MovedKeys:
    """A section with method sections. A setting that moved into one (``data.csv`` is now
    ``data.csv.train``) is still read and written under its old flat name, as on the
    command line; any other unknown name is an error, never a silently ignored attribute."""

    def _moved(self, name: str) -> tuple[str, str]:
        alias = None if name.startswith("_") else _alias(_methods_field(self), name)
        if alias is None:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}")
        return alias

    def __getattr__(self, name: str) -> Any:  # only for names that are not fields
        method, key = self._moved(name)
        return getattr(self.options(method), key)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _field_names(type(self)) or name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        method, key = self._moved(name)
        setattr(self.options(method), key, value)


def _moved_keys_accepted(cls: type) -> type:
    """Lets the constructor take moved settings by their old names too
    (``AlgorithmConfig(margin_alpha=4)``), as ``__setattr__`` does."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **values: Any) -> None:
        moved = {k: values.pop(k) for k in list(values) if k not in _field_names(cls)}
        init(self, *args, **values)
        for key, value in moved.items():
            try:
                setattr(self, key, value)
            except AttributeError as error:
                raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {key!r}") from error

    cls.__init__ = __init__
    return cls


@_moved_keys_accepted
@dataclass
class ModelConfig(_MovedKeys):
    """Backbone, where its weights come from, and what of it is trained."""

    backbone: str = opt("ViT-B-16", "open_clip name, timm:NAME, or a built-in (efficientnet-lite0, "
                                    "tiny-vit, tiny-resnet)")
    pretrained: str | None = opt("openai", "weights: an open_clip tag (openai), 'default' (timm), "
                                           "a local file, or none (random)")
    peft: str = opt("vpt-deep", "PEFT method(s), several joined by '+' (e.g. lora+vpt-deep)")
    partial: int | None = opt(None, "restrict block-wise PEFT to the last k blocks", ge=1)
    head_init: str = opt("random", "cosine heads: random, or text (CLIP embeddings of text_template)",
                         choices=("random", "text"))
    text_template: str = opt("a photo of a {}.", "prompt for text-initialised heads and zero-shot")
    logit_scale: float = opt(1 / 0.07, "initial scale s of the cosine heads", gt=0)
    image_size: int | None = opt(None, "input resolution (None = the backbone's own)", ge=8, le=4096)
    quick_gelu: bool | str = opt("auto", "QuickGELU activation: auto (from the pretrained tag; "
                                         "OpenAI weights need it), true, false",
                                 choices=("auto", True, False))
    init_seed: int = opt(0, "seed of randomly initialised (pretrained: none) weights", ge=0,
                         le=2**32 - 1)
    grad_checkpointing: bool = opt(False, "recompute block activations in the backward pass "
                                          "(less memory, ~30 % more compute)")
    cache_dir: str | None = opt(None, "where downloaded weights are cached (None = the default)")
    init_from: str | None = opt(None, "warm start: a finished run whose adapter and heads start "
                                      "this one (same backbone, PEFT and classes)")
    # Per-method sections (model.vpt, model.lora, ...), declared beside each PEFT method.
    methods: dict[str, Any] = field(default_factory=dict, metadata={"methods": "model"})

    def options(self, method: str):
        """The settings of a PEFT method (its defaults where not set)."""
        return method_section(self, "model", method)


@_moved_keys_accepted
@dataclass
class DataConfig(_MovedKeys):
    """Which dataset, how it is split into labeled / unlabeled, and how it is loaded."""

    name: str = opt("cifar100", "dataset: cifar10, cifar100, food101, fashion-mnist, stl10, "
                                "semi-aves, imagenet, folder, csv, hf, synthetic")
    root: str = opt("data", "where the dataset's files are (or are downloaded to)")
    classes: list[str] | None = opt(None, "keep only these classes (names or indices), e.g. "
                                          "[T-shirt/top, Shirt]")
    labels_per_class: int | None = opt(4, "labeled images per class (None = every labeled image; "
                                          "0 = none: every label from data.extra_labels, the cold "
                                          "start of finessl suggest)", ge=0)
    extra_labels: str | None = opt(None, "labels added later: a CSV (path or DATASET:INDEX, label), "
                                         "e.g. from finessl suggest, or a Label Studio export (JSON, "
                                         "JSON-MIN or CSV)")
    extra_labels_in_unlabeled: bool = opt(False, "keep the extra-labeled images in the unlabeled pool")
    exclude: str | None = opt(None, "CSV of images to leave out of training (path or DATASET:INDEX "
                                    "in the first column), e.g. finessl audit's exclude.csv")
    split: str = opt("random", "labeled draw: random (seeded) or first (the first N, as the "
                               "authors' code)", choices=("random", "first"))
    unlabeled_includes_labeled: bool = opt(True, "the unlabeled pool also holds the labeled images")
    labeled_imbalance: float = opt(1.0, "long tail of the labeled set: n_k = N r^(-k/(C-1)); 1 = "
                                        "balanced", ge=1)
    unlabeled_imbalance: float = opt(1.0, "long tail of the unlabeled pool, the same way", ge=1)
    max_unlabeled: int | None = opt(None, "cap on the unlabeled pool (None = all)", ge=1)
    max_test: int | None = opt(None, "cap on the test set (None = all)", ge=1)
    download: bool = opt(True, "download missing datasets (where the dataset allows)")
    num_workers: int = opt(2, "data-loading processes", ge=0)
    gpu_augment: bool = opt(False, "augment raw batches on the training device (in-memory data)")
    strong_augment: str = opt("reference", "strong views: reference (the authors' RandAugment, "
                                           "2 of 14 ops, magnitudes 1-9, 16/224 Cutout) or wide",
                              choices=("reference", "wide"))
    # Per-dataset sections (data.folder, data.csv, data.hf, data.imagenet, data.semi-aves,
    # data.synthetic) and data.label_studio, declared beside each dataset.
    methods: dict[str, Any] = field(default_factory=dict, metadata={"methods": "data"})

    def options(self, method: str):
        """The settings of a dataset (its defaults where not set)."""
        return method_section(self, "data", method)


@_moved_keys_accepted
@dataclass
class AlgorithmConfig(_MovedKeys):
    """The SSL algorithm and its hyper-parameters (FineSSL defaults from the paper)."""

    name: str = opt("finessl", "finessl, supervised, pseudolabel, fixmatch, flexmatch, freematch, "
                               "softmatch, debiaspl, semikd")
    threshold: float = opt(0.7, "confidence threshold tau for pseudo-labels (the paper's "
                                "framework: 0.7)", gt=0, le=1)
    uratio: int = opt(1, "unlabeled batch = uratio x batch_size (mu)", ge=1)
    unlabeled_weight: float | None = opt(None, "weight gamma of the unlabeled loss (None = the "
                                               "algorithm's: FineSSL 3, others 1)", ge=0)
    unlabeled_warmup: float | None = opt(None, "fraction of training over which gamma ramps up "
                                               "from 0 (None = Pseudo-Label 0.4, others 0)",
                                         ge=0, le=1)
    strong_views: int | None = opt(None, "strong views per unlabeled image (None = the "
                                         "algorithm's: FineSSL 2)", ge=0)
    bms: bool | None = opt(None, "balanced margin softmax (None = the algorithm's default; its "
                                 "settings: algorithm.margins)")
    dls: bool | None = opt(None, "auxiliary head with decoupled label smoothing (None = the "
                                 "algorithm's default; its settings: algorithm.aux_head)")
    weighting: str | None = opt(None, "L_u weights: algorithm (its own mask), aux (auxiliary "
                                      "confidence, FineSSL), main (main confidence)",
                                choices=(None, "algorithm", "aux", "main"))
    ema_momentum: float = opt(0.999, "FreeMatch / SoftMatch / DebiasPL EMA momentum", ge=0, lt=1)
    ood: str = opt("none", "out-of-distribution pool images: none (keep all), filter (drop the share "
                           "judged foreign before training), auto (filter when it is >= 50 %)",
                   choices=("none", "auto", "filter"))
    # Per-algorithm sections (algorithm.softmatch, algorithm.semikd, ...), beside each algorithm,
    # and FineSSL's parts (algorithm.margins, algorithm.aux_head) in algorithms/components.py.
    methods: dict[str, Any] = field(default_factory=dict, metadata={"methods": "algorithm"})

    def options(self, method: str):
        """The settings of an algorithm (its defaults where not set)."""
        return method_section(self, "algorithm", method)


# finessl.eval.estimate's estimators (a test keeps the two lists equal).
ESTIMATORS = ("agreement", "atc", "doc", "temperature", "confidence", "capped-confidence",
              "capped-recall", "adjusted-confidence", "adjusted-recall", "none")


@dataclass
class TrainConfig:
    """Optimisation schedule and engine settings."""

    steps: int = opt(15000, "optimizer steps in all", ge=1)
    steps_per_epoch: int = opt(500, "steps per epoch (the pace resets and the schedule steps "
                                    "per epoch)", ge=1)
    batch_size: int = opt(32, "labeled images per step (per process under torchrun)", ge=1)
    accumulate: int = opt(1, "micro-batches per optimizer step (batch_size is split into them)",
                          ge=1)
    optimizer: str = opt("sgd", "sgd (the paper's) or adamw", choices=("sgd", "adamw"))
    lr: float = opt(0.03, "learning rate", gt=0)
    momentum: float = opt(0.9, "SGD momentum", ge=0, lt=1)
    betas: list[float] = opt([0.9, 0.999], "AdamW betas (beta1, beta2), each in [0, 1)", ge=0, lt=1,
                             length=2)
    eps: float = opt(1e-8, "AdamW epsilon", gt=0)
    weight_decay: float = opt(5e-4, "weight decay", ge=0)
    decay_all: bool | None = opt(None, "decay every parameter (None: sgd yes, as the paper; adamw "
                                       "not biases, norms, scales, prompts)")
    schedule: str = opt("cosine", "learning-rate schedule: cosine, linear or constant",
                        choices=("cosine", "linear", "constant"))
    schedule_unit: str = opt("epoch", "the schedule moves once per epoch (the reference) or per "
                                      "step", choices=("epoch", "step"))
    warmup_steps: int = opt(0, "linear warm-up of the learning rate over the first steps", ge=0)
    precision: str = opt("auto", "auto (fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16",
                         choices=("auto", "fp32", "bf16", "fp16"))
    device: str = opt("auto", "auto, cpu, cuda, cuda:N")
    eval_every: int | None = opt(None, "evaluate every N steps (None = once per epoch)", ge=1)
    checkpoint_every: int | None = opt(None, "also checkpoint every N steps", ge=1)
    eval_batch_size: int = opt(128, "batch size of evaluation", ge=1)
    test_predictions: str = opt("final", "keep the test set's logits (float16) for reports: the "
                                         "final model's (final), rewritten at every evaluation "
                                         "(every), or none (off)", choices=("final", "every", "off"))
    log_every: int = opt(50, "write a metrics line every N steps", ge=1)
    tensorboard: bool = opt(True, "TensorBoard event files in the run directory")
    loggers: list[str] = opt([], "extra experiment trackers: csv, mlflow, wandb",
                             choices=("csv", "mlflow", "wandb"))
    estimate: str = opt("capped-confidence", "label-free accuracy estimate at each evaluation "
                                             "(on the unlabeled pool): capped-confidence, "
                                             "capped-recall (with train.estimate_prior: at the "
                                             "labeled set's class mix, not the pool's), "
                                             "adjusted-confidence, adjusted-recall (the same with "
                                             "confidences moved to the given prior), "
                                             "confidence, atc, doc, temperature, agreement or none",
                        choices=ESTIMATORS)
    estimate_pool: int | None = opt(2000, "pool images each estimate reads (a fixed random "
                                          "subset; none: all)", ge=1)
    estimate_prior: str | None = opt(None, "a CSV of the pool's class shares (class, share; or "
                                           "an audit's pool_prior.csv) that the capped- and "
                                           "adjusted- estimators cap at instead of the labeled "
                                           "set's (a long-tailed pool)")
    keep: str = opt("last", "the adapter a run ends with: last, or best-estimate (the evaluation "
                            "with the highest estimated accuracy)", choices=("last", "best-estimate"))
    keep_margin: float = opt(1.0, "train.keep best-estimate keeps an earlier evaluation only if "
                                  "its estimate beats the last one's by more than this many points "
                                  "(step-to-step noise is not a reason to go back)", ge=0)
    compile: bool = opt(False, "torch.compile the model")
    channels_last: bool = opt(True, "channels-last memory format for CNNs on CUDA")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = opt(0, "seed of splits, initialisation, sampling and augmentation", ge=0,
                    le=2**32 - 1)
    description: str = opt("", "what this configuration is for")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain values; method sections sit inside their section (``model.lora``)."""
        values = dataclasses.asdict(self)
        for section in values.values():
            if isinstance(section, dict) and "methods" in section:
                section.update(section.pop("methods"))
        return values

    def to_flat(self) -> dict[str, Any]:
        """Every key as the command line names it (``model.lora.rank``) with its value."""
        return flatten(self.to_dict())

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_PlainDumper, sort_keys=False)


class _PlainDumper(yaml.SafeDumper):
    """Writes every value out in full: no anchors or aliases, which the loader refuses."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys (the first would be dropped silently) and
    aliases (a few hundred bytes of nested aliases expand to gigabytes: an alias bomb)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not allowed in a finessl config",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {shown(key)} (a second section or key of the same "
                    "name would silently replace the first)", key_node.start_mark)
            seen.add(key) if isinstance(key, (str, int, float, bool)) else None
        return super().construct_mapping(node, deep)


# A configuration is a few kB; anything far larger is not one (and is not read into memory).
MAX_CONFIG_BYTES = 1 << 20


# --------------------------------------------------------------------------- method sections

# The packages whose modules declare settings sections (``options.method_options``); they
# import this module for type checking only, so importing them here makes no cycle.
METHOD_PACKAGES = ("finessl.models.peft", "finessl.data", "finessl.algorithms")


def options_of(section: str) -> dict[str, MethodOptions]:
    """Every settings section of ``section`` ("model", "data", "algorithm")."""
    for package in METHOD_PACKAGES:
        importlib.import_module(package)
    return registered(section)


def method_section(section: Any, section_name: str, method: str):
    """The options instance of ``section_name.method``, created with defaults if unset."""
    entries = options_of(section_name)
    if method not in entries:
        raise ConfigError(unknown_name_message(f"{section_name} settings section", method,
                                               list(entries)))
    if method not in section.methods:
        section.methods[method] = entries[method].cls()
    return section.methods[method]


def methods_in_use(config: Config) -> dict[str, list[str]]:
    """The method sections the configured PEFT methods and algorithm read."""
    peft = [n.strip() for n in config.model.peft.split("+") if n.strip()]
    return {
        "model": [m for m, e in options_of("model").items() if e.used_with(set(peft))],
        "data": [m for m, e in options_of("data").items() if e.used_with({config.data.name})],
        "algorithm": [m for m, e in options_of("algorithm").items()
                      if e.used_with({config.algorithm.name})],
    }


# The sections with method sections (and so with moved keys).
SECTIONS = ("model", "data", "algorithm")


def moved_to(dotted: str) -> str | None:
    """Where an old flat key now lives (``data.csv`` -> ``data.csv.train``), or None."""
    parts = dotted.split(".")
    alias = _alias(parts[0], parts[1]) if len(parts) == 2 and parts[0] in SECTIONS else None
    return ".".join([parts[0], *alias]) if alias else None


def _alias(section_name: str, key: str) -> tuple[str, str] | None:
    """An old flat key (``lora_rank``) -> (method, field)."""
    for method, entry in options_of(section_name).items():
        if key in entry.aliases:
            return method, entry.aliases[key]
    return None


# --------------------------------------------------------------------------- building


def config_from_dict(values: dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
    """Builds a Config from a nested dict (then dotted ``overrides``), rejecting unknown
    keys, wrong types and values; validated once, with the overrides in."""
    config = Config()
    flat = flatten(values)
    _check_set_once(flat)
    for key, value in {**flat, **(overrides or {})}.items():
        set_value(config, key, value)
    return validate_config(config)


def _check_set_once(flat: dict[str, Any]) -> None:
    """A file setting one value under its old and its new key (``data.num_classes`` and
    ``data.synthetic.classes``) would keep whichever comes last: refused instead."""
    seen: dict[str, str] = {}
    for key in flat:
        canonical = moved_to(key) or key
        if canonical in seen:
            raise ConfigError(f"config keys {seen[canonical]!r} and {key!r} are the same setting "
                              f"({canonical}); keep one")
        seen[canonical] = key


def set_value(config: Config, dotted: str, value: Any) -> None:
    """Sets ``section.key`` (or a top-level key) with type checking and coercion."""
    moved = moved_to(dotted)
    if moved is not None:  # the old flat key of a method setting
        try:
            set_value(config, moved, value)
        except ConfigError as error:
            raise ConfigError(f"{error} (set as {dotted})") from None
        return
    parts = dotted.split(".")
    target: Any = config
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(target) if f.name != "methods"]
        section = _methods_field(target)
        if part not in names and section is not None and part in options_of(section):
            if depth == len(parts) - 1:
                raise ConfigError(f"config key {dotted!r} is a section; set one of its keys")
            target = method_section(target, section, part)
            continue
        if part not in names:
            if section is not None:
                names = names + list(options_of(section))
            prefix = ".".join(parts[:depth])
            choices = [f"{prefix}.{n}" if prefix else n for n in names]
            raise ConfigError(unknown_name_message("config key", dotted, choices))
        if depth == len(parts) - 1:
            hint = typing.get_type_hints(type(target))[part]
            if dataclasses.is_dataclass(hint):
                raise ConfigError(f"config key {dotted!r} is a section; set one of its keys")
            value = _coerce(dotted, value, hint)
            check_value(dotted, value, _field(type(target), part).metadata)
            setattr(target, part, value)
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"config key {'.'.join(parts[: depth + 1])!r} has no sub-keys")


def make_section(section: str, **values: Any) -> Any:
    """One section (``model``, ``data``, ``algorithm``, ``train``) with keys as the command
    line names them, e.g. ``make_section("model", backbone="tiny-vit", vpt_tokens=3)``."""
    config = Config()
    for key, value in values.items():
        set_value(config, f"{section}.{key}", value)
    return getattr(config, section)


def apply_overrides(config: Config, overrides: dict[str, str]) -> Config:
    """Applies ``{"train.steps": "100"}``-style overrides. A string is read by the type of
    its key, not as YAML: ``1e-4`` is a float, ``{} in the wild`` a template, ``none`` empty."""
    for key, raw in overrides.items():
        set_value(config, key, raw)
    return validate_config(config)


def validate_config(config: Config) -> Config:
    """Checks every value of a (possibly hand-edited) Config: types, ranges and choices,
    and the rules that tie keys together. Raises ConfigError naming the key."""
    in_use = methods_in_use(config)
    for section, methods in in_use.items():
        for method in methods:  # config.yaml records the settings of what is used
            method_section(getattr(config, section), section, method)
    for owner, name, dotted, value, hint, meta in _walk(config):
        value = _coerce(dotted, value, hint)  # a value set from Python ("1e-4") is typed here
        check_value(dotted, value, meta)
        setattr(owner, name, value)
    template = config.model.text_template
    try:
        filled = template.format("x")
    except (IndexError, KeyError, ValueError):
        filled = None
    if "{}" not in template or filled is None:
        raise ConfigError(f"config key 'model.text_template' must hold one {{}} where the class "
                          f"name goes (e.g. 'a photo of a {{}}.'); got {shown(template)}")
    set_elsewhere = [m for m in config.algorithm.methods if m not in in_use["algorithm"]
                     and dataclasses.asdict(config.algorithm.methods[m]) !=
                     dataclasses.asdict(options_of("algorithm")[m].cls())]
    if set_elsewhere:
        raise ConfigError(f"algorithm.{set_elsewhere[0]} settings are only used by algorithm.name "
                          f"{set_elsewhere[0]}, not {config.algorithm.name}")
    config.__dict__[_VALIDATED] = fingerprint(config)
    return config


# A Config remembers the fingerprint it was validated (and its names checked) with: one
# changed since is checked again, one that is not is never checked twice.
_VALIDATED, _RESOLVED = "_validated_as", "_resolved_as"


def fingerprint(config: Config) -> int:
    """Changes whenever any value of ``config`` does."""
    return hash(repr(config.to_dict()))


def is_validated(config: Config) -> bool:
    """Whether ``config`` passed ``validate_config`` and has not changed since."""
    return config.__dict__.get(_VALIDATED) == fingerprint(config)


def is_resolved(config: Config) -> bool:
    """Whether ``config`` passed ``mark_resolved`` (the builder's name checks too) and has
    not changed since."""
    return config.__dict__.get(_RESOLVED) == fingerprint(config)


def mark_resolved(config: Config) -> Config:
    config.__dict__[_RESOLVED] = fingerprint(config)
    return config


def check_value(dotted: str, value: Any, meta) -> None:
    """One field's choices and numeric range (None passes where the type allows it)."""
    choices = meta.get("choices")
    if isinstance(value, list):
        length = meta.get("length")
        if length is not None and len(value) != length:
            raise ConfigError(f"config key {dotted!r} needs {length} values; got {shown(value)}")
        for item in value:
            check_value(dotted, item, {**meta, "length": None})
        return
    if choices is not None and value not in choices:
        names = ", ".join("none" if c is None else str(c).lower() if isinstance(c, bool) else str(c)
                          for c in choices)
        raise ConfigError(f"config key {dotted!r} must be one of {names}; got {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {dotted!r} must be a finite number; got {value!r}")
    if value is None or isinstance(value, (bool, str)):
        return
    for bound, test, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                              ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        limit = meta.get(bound)
        if limit is not None and not test(value, limit):
            raise ConfigError(f"config key {dotted!r} must be {word} {limit}; got {shown(value)}")


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def _methods_field(obj: Any) -> str | None:
    """The section name if ``obj`` is a section with method sections."""
    for f in dataclasses.fields(obj):
        if f.name == "methods":
            return f.metadata["methods"]
    return None


def _field(cls, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _walk(obj: Any, prefix: str = ""):
    """(owner, field name, dotted key, value, type hint, metadata) of every leaf field."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "methods":
            for method, options in value.items():
                yield from _walk(options, f"{prefix}{method}.")
        elif dataclasses.is_dataclass(hints[f.name]):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            yield obj, f.name, f"{prefix}{f.name}", value, hints[f.name], f.metadata


def read_yaml(path: Path, text: str | None = None) -> Any:
    """YAML from a file (strict: no duplicate keys, no aliases); a syntax error becomes one
    line with the file and line number."""
    try:
        if text is None:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise ConfigError(f"{path} is {path.stat().st_size:,} bytes: too large to be a "
                                  "finessl config")
            text = path.read_text(encoding="utf-8")
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: malformed YAML ({problem})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {str(error)[:200]}") from None


def load_config(path: str | Path, overrides: dict[str, str] | None = None) -> Config:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    values = read_yaml(path)
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections")
    return config_from_dict(values, overrides)


def describe(config: Config) -> str:
    """The resolved configuration as YAML, each key followed by its one-line description."""
    lines = []
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{section.name}:  # {type(value).__doc__.splitlines()[0]}")
            for f in dataclasses.fields(value):
                if f.name == "methods":
                    continue
                lines.append(_described(f"  {f.name}", getattr(value, f.name), f.metadata))
            if _methods_field(value) is not None:
                for method, options in value.methods.items():
                    lines.append(f"  {method}:  # {type(options).__doc__.splitlines()[0]}")
                    for f in dataclasses.fields(options):
                        lines.append(_described(f"    {f.name}", getattr(options, f.name), f.metadata))
        else:
            lines.append(_described(section.name, value, section.metadata))
    return "\n".join(lines) + "\n"


def _described(key: str, value: Any, meta) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    text = text[:-4] if text.endswith("\n...") else text.removesuffix("...").strip()
    doc = meta.get("doc", "")
    return f"{key}: {text}" + (f"  # {doc}" if doc else "")


# --------------------------------------------------------------------------- presets


def preset_names() -> list[str]:
    folder = resources.files("finessl") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _preset_dict(name: str) -> dict:
    if name not in preset_names():
        raise ConfigError(unknown_name_message("preset", name, preset_names()))
    resource = resources.files("finessl") / "presets" / f"{name}.yaml"
    return read_yaml(Path(str(resource)), resource.read_text()) or {}


def load_preset(name: str, overrides: dict[str, str] | None = None) -> Config:
    return config_from_dict(_preset_dict(name), overrides)


def preset_description(name: str) -> str:
    """A preset's ``description``, read without resolving the configuration (which imports
    the method packages, torch with them): ``finessl presets`` stays instant."""
    return str(_preset_dict(name).get("description", ""))


# --------------------------------------------------------------------------- helpers


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``: the keys as the command line names them."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Checks ``value`` against a field's annotation and converts where the meaning is clear.

    Text (from the command line, or what YAML 1.1 leaves a string: ``1e-4``) is read by the
    field's type: numbers in any notation Python reads (``1e-4``, ``1E6``, ``10_000``; an
    integral float for an int), ``true``/``false`` for a bool, ``none``/``null`` for an
    empty value; lists take a YAML list or a comma-separated string."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    list_type = next((o for o in options if typing.get_origin(o) is list), None)
    if list_type is not None and value is not None:
        if isinstance(value, str) and value.lower() not in {"none", "null"}:
            text = value.strip()
            if text.startswith("["):  # a YAML list given as one string
                try:
                    value = yaml.load(text, Loader=_StrictLoader)  # noqa: S506
                except yaml.YAMLError:
                    raise ConfigError(f"config key {key!r}: {shown(value)} is not a list") from None
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # one item
        if isinstance(value, (list, tuple)):
            item = typing.get_args(list_type)[0]
            coerced = []
            for i, v in enumerate(value):
                if item is str and isinstance(v, int) and not isinstance(v, bool):
                    v = str(v)  # class indices
                coerced.append(_coerce(f"{key}[{i}]", v, item))
            return coerced
    if value is None or (isinstance(value, str) and value.strip().lower() in {"none", "null", "~"}):
        if type(None) in options:
            return None
        if str in options and value is not None:
            return value
        raise ConfigError(f"config key {key!r} cannot be empty")
    if isinstance(value, str):
        for option in (o for o in (bool, int, float) if o in options):
            parsed = _parse_text(value, option)
            if parsed is not None:
                return parsed
        if str in options:
            return value
    for option in options:
        if option is bool:
            if isinstance(value, bool):
                return value
        elif option is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer() and float not in options:
                return int(value)  # 1.0e4 in a YAML file
        elif option is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif option is str:
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                return str(value)
    wanted = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"config key {key!r} expects {wanted}, got {shown(value)}")


_TRUE, _FALSE = {"true", "yes", "on"}, {"false", "no", "off"}


def _parse_text(text: str, kind: type) -> Any:
    """``text`` as a ``kind`` (bool, int or float), or None when it is not one."""
    word = text.strip().lower()
    if kind is bool:
        return True if word in _TRUE else False if word in _FALSE else None
    if word in {".inf", "+.inf", "-.inf", ".nan"}:  # YAML's spellings: refused as non-finite
        word = word.replace(".", "")
    try:
        number = float(word)
    except ValueError:
        return None
    if kind is float:
        return number
    try:
        return int(word)
    except ValueError:
        return int(number) if math.isfinite(number) and number.is_integer() else None
