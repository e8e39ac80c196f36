"""The algorithm interface: ``step(model, batch) -> loss + logs``, state kept as buffers,
and ``needs(config) -> Needs``: what the run must provide (views, batch shape, collaborators)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from finessl.distributed import DistEnv
from finessl.registry import Registry

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import AlgorithmConfig
    from finessl.models.backbone_base import Backbone


@dataclass
class Batch:
    """One training step's data. Unlabeled fields are None for supervised algorithms."""

    images: torch.Tensor
    labels: torch.Tensor
    unlabeled_index: torch.Tensor | None = None
    weak: torch.Tensor | None = None
    strong: list[torch.Tensor] = field(default_factory=list)
    # True labels of the unlabeled images when known (-1 otherwise): diagnostics only.
    unlabeled_labels: torch.Tensor | None = None

    def split(self, parts: int) -> list[Batch]:
        """``parts`` micro-batches, in order (gradient accumulation)."""
        if parts == 1:
            return [self]

        def chunks(tensor):
            return [None] * parts if tensor is None else list(tensor.chunk(parts))

        strong = [chunks(view) for view in self.strong]
        return [Batch(images, labels, index, weak, [view[i] for view in strong], truth)
                for i, (images, labels, index, weak, truth) in enumerate(zip(
                    chunks(self.images), chunks(self.labels), chunks(self.unlabeled_index),
                    chunks(self.weak), chunks(self.unlabeled_labels)))]


@dataclass
class StepResult:
    loss: torch.Tensor
    logs: dict[str, float]
    # The loss terms as tensors (with their graphs), for tests and diagnostics.
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Collaboration:
    """What a collaborator is made from: the algorithm's settings, the run's classes and
    student backbone, and ``rebuild(run_dir, device)`` (``finessl.trained.rebuild``: a
    trained run as a model), handed in so that an algorithm never imports the builder."""

    config: AlgorithmConfig
    classes: list[str]
    backbone: Backbone
    rebuild: Callable[..., Any]


@dataclass(frozen=True)
class Needs:
    """What an algorithm asks of the run it is built into. The builder makes the data views
    and the collaborators from it, the trainer sizes its batches by it; neither reads
    ``config.algorithm`` for these.

    ``collaborators``: keyword -> a function of a ``Collaboration`` making the object the
    algorithm's constructor receives under that keyword (SemiKD: its frozen teacher)."""

    strong_views: int = 0  # strong views of each unlabeled image
    unlabeled_ratio: int = 0  # unlabeled images per labeled one in a batch; 0: no unlabeled batch
    collaborators: Mapping[str, Callable[[Collaboration], Any]] = field(default_factory=dict)

    @property
    def uses_unlabeled(self) -> bool:
        return self.unlabeled_ratio > 0


class Algorithm(nn.Module):
    """Base class. Subclasses own their state as buffers, so it is checkpointed with them.

    ``defaults`` holds the algorithm's own values for the config keys left at None
    (``unlabeled_weight``, ``strong_views``, ``bms``, ``dls``, ``weighting``,
    ``unlabeled_warmup``).

    Collaborators come in the constructor: ``total_steps`` (the run's length, for
    warm-ups), ``dist`` (under torchrun: state updates then see the global batch) and
    the ones ``needs`` declares (SemiKD's ``teacher``), made by the builder.
    """

    name = "algorithm"
    uses_unlabeled = True
    defaults: dict = {"unlabeled_weight": 1.0, "strong_views": 1, "bms": False, "dls": False,
                      "weighting": "algorithm", "unlabeled_warmup": 0.0}

    def __init__(self, config: AlgorithmConfig, num_classes: int, num_unlabeled: int, *,
                 total_steps: int | None = None, dist: DistEnv | None = None) -> None:
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.num_unlabeled = num_unlabeled
        self.total_steps = total_steps
        self.unlabeled_weight = self.option(config, "unlabeled_weight")
        self.dist = dist or DistEnv()

    @classmethod
    def option(cls, config: AlgorithmConfig, key: str):
        value = getattr(config, key)
        return cls.defaults[key] if value is None else value

    @classmethod
    def needs(cls, config: AlgorithmConfig) -> Needs:
        """What the run must provide: strong views, the unlabeled batch, collaborators."""
        if not cls.uses_unlabeled:
            return Needs()
        return Needs(strong_views=cls.option(config, "strong_views"), unlabeled_ratio=config.uratio)

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of every epoch."""

    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        raise NotImplementedError

    def diagnostics(self) -> dict | None:
        """Statistics since the last call, logged at each evaluation (None: nothing to say)."""
        return None


ALGORITHMS: Registry[Callable[..., Algorithm]] = Registry("algorithm")


def build_algorithm(config: AlgorithmConfig, num_classes: int, num_unlabeled: int,
                    **context) -> Algorithm:
    """The configured algorithm; ``context``: ``total_steps``, ``dist`` and the collaborators
    its ``needs`` declares."""
    return ALGORITHMS.get(config.name)(config, num_classes, num_unlabeled, **context)


def algorithm_class(config: AlgorithmConfig) -> type[Algorithm]:
    return ALGORITHMS.get(config.name)


def trains_aux_head(config: AlgorithmConfig) -> bool:
    """Whether the algorithm trains the auxiliary head (FineSSL's DLS); an untrained one is
    a copy of the initial main head, useless for head agreement."""
    return bool(algorithm_class(config).option(config, "dls"))


def pseudo_label_accuracy(pseudo: torch.Tensor, truth: torch.Tensor | None,
                          mask: torch.Tensor) -> dict[str, float]:
    """Accuracy of pseudo-labels (all, and among selected) where the truth is known."""
    if truth is None:
        return {}
    known = truth >= 0
    if not known.any():
        return {}
    correct = (pseudo == truth) & known
    logs = {"pl_acc": (correct.sum() / known.sum()).item()}
    chosen = known & mask
    if chosen.any():
        logs["pl_acc_selected"] = (correct & chosen).sum().item() / chosen.sum().item()
    return logs


@dataclass
class ViewLogits:
    """Main (and auxiliary) logits of each view; strong views are concatenated in order."""

    labeled: torch.Tensor
    strong: torch.Tensor | None
    weak: torch.Tensor | None  # without gradients unless the algorithm trains on it
    labeled_aux: torch.Tensor | None = None
    strong_aux: torch.Tensor | None = None
    weak_aux: torch.Tensor | None = None


def forward_views(model: nn.Module, batch: Batch, weak_grad: bool = False, aux: bool = False,
                  aux_stop_gradient: bool = True) -> ViewLogits:
    """Labeled and strong views in one forward with gradients; the weak view without.

    The weak view only produces pseudo-labels and confidences, so building its graph (as
    the reference code does) is wasted memory and time. ``weak_grad`` is for algorithms
    that train on the weak view itself (Pseudo-Label); ``aux`` adds the auxiliary head.
    """
    def run(images):
        out = model(images, aux=aux, aux_stop_gradient=aux_stop_gradient)
        return (out[0].float(), out[1].float()) if aux else (out.float(), None)

    weak = weak_aux = None
    if batch.weak is not None and not weak_grad:
        with torch.no_grad():
            weak, weak_aux = run(batch.weak)
    parts = [batch.images, *batch.strong] + ([batch.weak] if weak_grad else [])
    sizes = [p.shape[0] for p in parts]
    logits, aux_logits = run(torch.cat(parts))
    chunks = logits.split(sizes)
    aux_chunks = aux_logits.split(sizes) if aux else [None] * len(parts)
    if weak_grad:
        weak, weak_aux = chunks[-1], aux_chunks[-1]
        chunks, aux_chunks = chunks[:-1], aux_chunks[:-1]
    strong = torch.cat(chunks[1:]) if len(chunks) > 1 else None
    strong_aux = torch.cat(aux_chunks[1:]) if aux and len(chunks) > 1 else None
    return ViewLogits(chunks[0], strong, weak, aux_chunks[0], strong_aux, weak_aux)
