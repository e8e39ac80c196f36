"""SemiKD: distilling a FineSSL-tuned teacher into a smaller student, as the authors run it.

The student is trained by the shared pseudo-labeling step (its own FineSSL losses: balanced
margins, auxiliary head, confidence weighting) plus distillation from the frozen teacher on
the weak view: its main head from the teacher's main head, its auxiliary head from the
teacher's auxiliary head (soft targets, T = 1). An adaptive balance ``a`` (start 0.5,
``algorithm.semikd.balance_start``) shifts
weight from distillation to self-training::

    L = L_x + L_x' + gamma [(1 - a)(KD_main + KD_aux) + a (L_u + L_u')]

with the balanced-margin scale ``alpha * a``. Every ``balance_every`` (10) steps (step 0
included), after the forward and before the loss, ``a <- clip(0.99 a + 0.01 r a, 0, 1)``
where ``r = CE_teacher / CE_student``: each model's cross-entropy of its strong-view logits
against its own weak-view arg-max, averaged over the steps since the last update
(this step included).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from finessl.algorithms.base import ALGORITHMS, Batch, Collaboration, Needs, ViewLogits
from finessl.algorithms.components import soft_cross_entropy
from finessl.algorithms.self_training import SelfTraining
from finessl.errors import ConfigError
from finessl.options import method_options, opt

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import AlgorithmConfig


class Teacher:
    """A frozen trained model, fed the student's images re-normalised for it.

    Returns the teacher's main and auxiliary logits. Deliberately not an ``nn.Module``
    attribute of the algorithm: the teacher is not part of the student's checkpoint.
    """

    def __init__(self, model: nn.Module, teacher_size: int, teacher_mean, teacher_std,
                 student_mean, student_std) -> None:
        self.model = model.eval().requires_grad_(False)
        self.size = teacher_size
        self.scale = torch.tensor(student_std).view(1, 3, 1, 1) / torch.tensor(teacher_std).view(1, 3, 1, 1)
        self.shift = ((torch.tensor(student_mean) - torch.tensor(teacher_mean)) /
                      torch.tensor(teacher_std)).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if next(self.model.parameters()).device != images.device:
            self.model.to(images.device)
        x = images * self.scale.to(images) + self.shift.to(images)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        main, aux = self.model(x, aux=True)
        return main.float(), aux.float()


def updated_balance(balance: float, ratio: float) -> float:
    """``a <- clip(0.99 a + 0.01 r a, 0, 1)``."""
    return min(max(0.99 * balance + 0.01 * ratio * balance, 0.0), 1.0)


def own_label_cross_entropy(strong_logits: torch.Tensor, weak_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample CE of the strong-view logits against the weak view's arg-max."""
    return F.cross_entropy(strong_logits.float(), weak_logits.argmax(dim=-1), reduction="none")


@method_options("algorithm", "semikd", aliases={"teacher": "teacher"})
@dataclass
class SemiKDOptions:
    """SemiKD's teacher and adaptive balance."""

    teacher: str | None = opt(None, "run directory of the trained teacher")
    balance_every: int = opt(10, "steps between updates of the balance a", ge=1)
    balance_start: float = opt(0.5, "initial balance a between distillation and self-training",
                               ge=0, le=1)


def load_teacher(context: Collaboration) -> Teacher:
    """SemiKD's collaborator: the trained run named by ``algorithm.semikd.teacher``, frozen,
    on the CPU until the first step, fed the student's images."""
    run_dir = context.config.options("semikd").teacher
    if not run_dir:
        raise ConfigError("semikd needs a teacher: finessl distill --teacher RUN_DIR (or "
                          "--algorithm.semikd.teacher RUN_DIR)")
    teacher = context.rebuild(run_dir, device="cpu")
    if teacher.classes != list(context.classes):
        raise ConfigError("the teacher was trained on other classes than this data")
    return Teacher(teacher.model, teacher.image_size, teacher.mean, teacher.std,
                   context.backbone.mean, context.backbone.std)


@ALGORITHMS.register("semikd")
class SemiKD(SelfTraining):
    weak_grad = True  # distillation trains the student's weak-view logits
    defaults = {**SelfTraining.defaults, "unlabeled_weight": 5.0, "strong_views": 1,
                "bms": True, "dls": True, "weighting": "aux"}

    @classmethod
    def needs(cls, config: AlgorithmConfig) -> Needs:
        return dataclasses.replace(super().needs(config), collaborators={"teacher": load_teacher})

    def __init__(self, config: AlgorithmConfig, num_classes: int, num_unlabeled: int, *,
                 teacher: Teacher | None = None, **context) -> None:
        super().__init__(config, num_classes, num_unlabeled, **context)
        if teacher is None:
            raise ConfigError("semikd needs a teacher: use 'finessl distill --teacher RUN_DIR'")
        self.teacher = teacher
        self.settings = config.options("semikd")
        self.register_buffer("balance", torch.tensor(float(self.settings.balance_start)))
        # Since the last balance update: sum of teacher CE, sum of student CE, samples.
        self.register_buffer("ratio_sums", torch.zeros(3, dtype=torch.float64))
        self._teacher_weak: tuple[torch.Tensor, torch.Tensor] | None = None

    def margin_alpha(self) -> float:
        return self.margin_options.alpha * self.balance.item()

    def after_forward(self, out: ViewLogits, batch: Batch) -> None:
        self._teacher_weak = self.teacher(batch.weak)
        teacher_strong, _ = self.teacher(batch.strong[0])
        with torch.no_grad():
            n = batch.weak.shape[0]
            teacher_ce = own_label_cross_entropy(teacher_strong, self._teacher_weak[0])
            student_ce = own_label_cross_entropy(out.strong[:n].detach(), out.weak.detach())
            teacher_ce, student_ce = self.dist.gather(teacher_ce), self.dist.gather(student_ce)
            self.ratio_sums += torch.stack([teacher_ce.sum(), student_ce.sum(),
                                            torch.tensor(float(teacher_ce.numel()))]).to(self.ratio_sums)
            if int(self.steps) % self.settings.balance_every == 0:
                teacher_sum, student_sum, _ = self.ratio_sums.tolist()
                ratio = teacher_sum / max(student_sum, 1e-8)
                self.balance.fill_(updated_balance(self.balance.item(), ratio))
                self.ratio_sums.zero_()

    def extra_losses(self, out: ViewLogits, batch: Batch, weight: torch.Tensor,
                     selected: torch.Tensor) -> dict[str, torch.Tensor]:
        teacher_main, teacher_aux = self._teacher_weak
        terms = {"kd": soft_cross_entropy(out.weak, teacher_main.softmax(dim=-1)).mean()}
        if self.dls:
            terms["kd_aux"] = soft_cross_entropy(out.weak_aux, teacher_aux.softmax(dim=-1)).mean()
        return terms

    def combine(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        a = self.balance.item()
        distill = sum(terms[k] for k in ("kd", "kd_aux") if k in terms)
        own = sum(terms[k] for k in ("loss_u", "loss_u_aux") if k in terms)
        labeled = sum(terms[k] for k in ("loss_x", "loss_x_aux") if k in terms)
        return labeled + self.unlabeled_weight * ((1 - a) * distill + a * own)

    def step(self, model: nn.Module, batch: Batch):
        result = super().step(model, batch)
        result.logs["balance"] = self.balance.item()
        return result


@dataclass(frozen=True)
class Distillation:
    """What ``finessl distill`` sets over the teacher's own configuration: the paper's
    student (ImageNet-21k ViT-S/16 with VPT, SemiKD losses) and the teacher's run."""

    student: dict[str, str] = dataclasses.field(default_factory=lambda: {
        "model.backbone": "timm:vit_small_patch16_224.augreg_in21k", "model.pretrained": "default",
        "model.peft": "vpt-deep", "algorithm.name": "semikd", "algorithm.margins.alpha": "10",
        "algorithm.uratio": "2", "algorithm.unlabeled_weight": "5", "algorithm.strong_views": "1",
    })
    teacher_key: str = "algorithm.semikd.teacher"
