"""Run configuration: typed dataclasses, presets shipped as YAML, dotted CLI overrides.

A run is fully described by one ``Config``; ``config.yaml`` in the run directory is its
resolved form, so ``load_config(run_dir / "config.yaml")`` rebuilds the exact run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from finessl.errors import ConfigError
from finessl.registry import unknown_name_message


@dataclass
class ModelConfig:
    """Backbone, where its weights come from, and what of it is trained."""

    backbone: str = "ViT-B-16"
    # open_clip tag ("openai"), "hf-hub:org/repo", a local file, or "none" (random init).
    pretrained: str | None = "openai"
    # A PEFT method, or several joined by "+" (e.g. "lora+vpt-deep").
    peft: str = "vpt-deep"
    # Restrict block-wise PEFT methods to the last k transformer blocks ("partial=k").
    partial: int | None = None
    vpt_tokens: int = 50
    lora_rank: int = 8
    lora_alpha: float = 1.0  # LoRA update scale = lora_alpha / lora_rank
    adapter_dim: int = 8
    adapter_scale: float = 0.1
    adaptformer_dim: int = 64
    adaptformer_scale: float = 0.1
    # Head initialisation: "random", or "text" (CLIP text embeddings of text_template).
    head_init: str = "random"
    text_template: str = "a photo of a {}."
    logit_scale: float = 1 / 0.07
    # Input resolution; None = the backbone's own.
    image_size: int | None = None
    # Seed of random-initialised (pretrained: none) weights, so a run can be rebuilt.
    init_seed: int = 0
    cache_dir: str | None = None


@dataclass
class DataConfig:
    """Which dataset, how it is split into labeled / unlabeled, and how it is loaded."""

    name: str = "cifar100"
    root: str = "data"
    labels_per_class: int | None = 4
    # "random": seeded draw per class; "first": the first N per class (reference code).
    split: str = "random"
    unlabeled_includes_labeled: bool = True
    # Long-tailed splits: n_k = n_max * ratio^(-k/(C-1)); 1 = balanced.
    labeled_imbalance: float = 1.0
    unlabeled_imbalance: float = 1.0
    # Cap on the unlabeled pool / test set (None = all); handy for CPU runs.
    max_unlabeled: int | None = None
    max_test: int | None = None
    download: bool = True
    num_workers: int = 2
    # Augment weak / strong views in batches on the training device (in-memory datasets).
    gpu_augment: bool = False
    # folder / csv datasets
    labeled_dir: str | None = None
    unlabeled_dir: str | None = None
    test_dir: str | None = None
    csv: str | None = None
    test_csv: str | None = None
    # semi-aves: add the out-of-distribution unlabeled pool
    out_of_distribution: bool = False
    # imagenet: labeled subset as a per-class fraction, or a list of file names
    label_fraction: float | None = None
    subset_file: str | None = None
    # synthetic dataset
    num_classes: int = 10
    synthetic_size: int = 200
    synthetic_test_size: int = 100


@dataclass
class AlgorithmConfig:
    """The SSL algorithm and its hyper-parameters (FineSSL defaults from the paper)."""

    name: str = "finessl"
    # Confidence threshold for pseudo-labels (tau; the paper's framework uses 0.7).
    threshold: float = 0.7
    # Unlabeled batch = uratio * batch_size (mu).
    uratio: int = 1
    # Weight of the unlabeled loss (gamma / w_con; FineSSL 3, FixMatch 1).
    unlabeled_weight: float | None = None  # None = the algorithm's own default
    # Balanced margin softmax scale (alpha).
    margin_alpha: float = 8.0
    # Decoupled label smoothing (lambda) of the auxiliary head's targets.
    smoothing: float = 0.5
    # Minimum auxiliary confidence for an unlabeled sample to count (th_min).
    aux_min_confidence: float = 0.0
    # Strong views per unlabeled image (None = the algorithm's default; FineSSL 2).
    strong_views: int | None = None
    # FineSSL's parts as switches on any algorithm (None = the algorithm's default):
    # balanced margin softmax, and decoupled label smoothing (auxiliary head).
    bms: bool | None = None
    bms_labeled: bool = True  # False: margins on the unlabeled loss only (ablation)
    margin_fixed: bool = False  # True: margin scale = alpha, not alpha * (max beta - min beta)
    dls: bool | None = None
    aux_stop_gradient: bool = True  # False: ablation, the auxiliary losses reach the backbone
    # How unlabeled samples are weighted in L_u: "algorithm" (its own mask / weights),
    # "aux" (auxiliary-head confidence, FineSSL), "main" (main-head confidence).
    weighting: str | None = None
    # FlexMatch: warm-up that counts unused samples as a class.
    flex_warmup: bool = True
    # FreeMatch / SoftMatch / DebiasPL EMA momenta and parameters.
    ema_momentum: float = 0.999
    fairness_weight: float = 0.01  # FreeMatch lambda_f
    softmatch_sigmas: float = 2.0  # SoftMatch n_sigma
    debias_strength: float = 0.4  # DebiasPL tau
    # SemiKD: the run directory of the (frozen) teacher
    teacher: str | None = None


@dataclass
class TrainConfig:
    """Optimisation schedule and engine settings."""

    steps: int = 15000
    steps_per_epoch: int = 500
    batch_size: int = 32
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # "cosine": cosine annealing stepped once per epoch (reference); "constant".
    schedule: str = "cosine"
    # "auto" (fp16 on CUDA, fp32 on CPU), "fp32", "bf16", "fp16".
    precision: str = "auto"
    device: str = "auto"
    eval_every: int | None = None  # steps; None = once per epoch
    checkpoint_every: int | None = None  # steps; checkpoints are also written at every eval
    eval_batch_size: int = 128
    log_every: int = 50
    tensorboard: bool = True  # event files in run_dir/tensorboard when tensorboard is installed
    compile: bool = False  # torch.compile the model
    channels_last: bool = True  # channels-last memory format for CNNs on CUDA


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- building


def config_from_dict(values: dict[str, Any]) -> Config:
    """Builds a Config from a nested dict, rejecting unknown keys and wrong types."""
    config = Config()
    for key, value in _flatten(values).items():
        set_value(config, key, value)
    return config


def set_value(config: Config, dotted: str, value: Any) -> None:
    """Sets ``section.key`` (or a top-level key) with type checking and coercion."""
    parts = dotted.split(".")
    target: Any = config
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(target)]
        if part not in names:
            prefix = ".".join(parts[:depth])
            choices = [f"{prefix}.{n}" if prefix else n for n in names]
            raise ConfigError(unknown_name_message("config key", dotted, choices))
        if depth == len(parts) - 1:
            hint = typing.get_type_hints(type(target))[part]
            if dataclasses.is_dataclass(hint):
                raise ConfigError(f"config key {dotted!r} is a section; set one of its keys")
            setattr(target, part, _coerce(dotted, value, hint))
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"config key {'.'.join(parts[: depth + 1])!r} has no sub-keys")


def apply_overrides(config: Config, overrides: dict[str, str]) -> Config:
    """Applies ``{"train.steps": "100"}``-style string overrides (YAML-parsed values)."""
    for key, raw in overrides.items():
        set_value(config, key, yaml.safe_load(raw) if isinstance(raw, str) else raw)
    return config


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with path.open() as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections")
    return config_from_dict(values)


# --------------------------------------------------------------------------- presets


def preset_names() -> list[str]:
    folder = resources.files("finessl") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> Config:
    if name not in preset_names():
        raise ConfigError(unknown_name_message("preset", name, preset_names()))
    text = (resources.files("finessl") / "presets" / f"{name}.yaml").read_text()
    return config_from_dict(yaml.safe_load(text) or {})


# --------------------------------------------------------------------------- helpers


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Checks ``value`` against a field's annotation, converting int -> float where fitting."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
        if type(None) in options:
            return None
        if str in options and value is not None:
            return value
        raise ConfigError(f"config key {key!r} cannot be empty")
    for option in options:
        if option is bool:
            if isinstance(value, bool):
                return value
        elif option is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif option is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif option is str:
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                return str(value)
    wanted = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"config key {key!r} expects {wanted}, got {value!r}")

