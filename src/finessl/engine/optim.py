"""Optimizers and learning-rate schedules.

The paper's recipe is the default: SGD (momentum 0.9, weight decay 5e-4 on every trained
parameter) with cosine annealing stepped once per epoch and no warm-up. ``train.optimizer
adamw`` uses decoupled weight decay and, by the usual convention, none on biases,
normalisation and scale vectors (every 1-d tensor, the heads' scales included) or on VPT
prompt tokens; ``train.decay_all true`` decays everything as the paper's SGD does.

Schedules (``train.schedule``) give a factor of the base lr: ``cosine``
``0.5 (1 + cos(pi t / T))``, ``linear`` ``1 - t / T``, ``constant`` 1, where ``t`` counts
epochs (``train.schedule_unit epoch``, the reference: lr changes at epoch boundaries) or
steps (``step``) after the warm-up and ``T`` is their total. ``train.warmup_steps`` ramps
the factor linearly from ``1 / (warmup + 1)`` to 1 over the first steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from finessl.config import TrainConfig
from finessl.errors import ConfigError


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or "prompt" in name


def parameter_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("nothing to train: the model has no trainable parameters")
    if decay_all:
        return [{"params": [p for _, p in named], "weight_decay": weight_decay}]
    decay = [p for n, p in named if not _no_decay(n, p)]
    no_decay = [p for n, p in named if _no_decay(n, p)]
    return [group for group in ({"params": decay, "weight_decay": weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}) if group["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        decay_all = True if cfg.decay_all is None else cfg.decay_all
        groups = parameter_groups(model, cfg.weight_decay, decay_all)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        decay_all = False if cfg.decay_all is None else cfg.decay_all
        groups = parameter_groups(model, cfg.weight_decay, decay_all)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    raise ConfigError(f"train.optimizer must be sgd or adamw, got {cfg.optimizer!r}")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The multiplier of the base lr for the optimizer step with index ``step`` (from 0)."""
    warmup = cfg.warmup_steps
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if cfg.schedule_unit == "epoch":
        position = step // cfg.steps_per_epoch
        total = math.ceil(cfg.steps / cfg.steps_per_epoch)
    else:
        position, total = step - warmup, max(1, cfg.steps - warmup)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * position / total))
    if cfg.schedule == "linear":
        return 1.0 - position / total
    return 1.0  # constant


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """Stepped after every optimizer step; ``lr_factor`` decides when the lr changes."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
