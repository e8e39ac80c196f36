"""SemiKD: distilling a FineSSL-tuned teacher into a smaller student (spec section 5).

The student trains its own FineSSL losses and learns from the frozen teacher's soft
predictions on the weak view; an adaptive balance ``a`` (start 0.5) shifts weight from
distillation to self-training as the student's weak -> strong consistency approaches the
teacher's::

    L = L_x + L_x' + gamma [(1 - a)(KD_main + KD_aux) + a (L_u + L_u')]

Every ``balance_every`` steps: ``r = CE_teacher(weak -> strong) / CE_student(weak -> strong)``
and ``a <- clip(0.99 a + 0.01 r a, 0, 1)``. The balanced-margin scale is ``alpha * a``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from finessl.algorithms.base import ALGORITHMS, Algorithm, Batch, StepResult, forward_views
from finessl.algorithms.components import (
    ClassPace,
    aux_weights,
    balanced_margins,
    decoupled_smoothing_losses,
    margin_cross_entropy,
    soft_cross_entropy,
)
from finessl.config import AlgorithmConfig
from finessl.errors import ConfigError


class Teacher:
    """A frozen trained model, fed the student's images re-normalised for it.

    Deliberately not an ``nn.Module`` attribute of the algorithm: the teacher is not part
    of the student's checkpoint.
    """

    def __init__(self, model: nn.Module, teacher_size: int, teacher_mean, teacher_std,
                 student_mean, student_std) -> None:
        self.model = model.eval().requires_grad_(False)
        self.size = teacher_size
        self.scale = torch.tensor(student_std).view(1, 3, 1, 1) / torch.tensor(teacher_std).view(1, 3, 1, 1)
        self.shift = ((torch.tensor(student_mean) - torch.tensor(teacher_mean)) /
                      torch.tensor(teacher_std)).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if next(self.model.parameters()).device != images.device:
            self.model.to(images.device)
        x = images * self.scale.to(images) + self.shift.to(images)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(x).float()



def updated_balance(balance: float, ratio: float) -> float:
    """``a <- clip(0.99 a + 0.01 r a, 0, 1)``."""
    return min(max(0.99 * balance + 0.01 * ratio * balance, 0.0), 1.0)


@ALGORITHMS.register("semikd")
class SemiKD(Algorithm):
    name = "semikd"
    defaults = {"unlabeled_weight": 5.0, "strong_views": 1, "bms": True, "dls": True,
                "weighting": "aux"}
    balance_every = 10

    def __init__(self, config: AlgorithmConfig, num_classes: int, num_unlabeled: int) -> None:
        super().__init__(config, num_classes, num_unlabeled)
        self.pace = ClassPace(num_unlabeled, num_classes)
        self.register_buffer("balance", torch.tensor(0.5))
        self.register_buffer("steps", torch.tensor(0))
        self.teacher: Teacher | None = None

    def on_epoch_start(self, epoch: int) -> None:
        self.pace.reset()

    def step(self, model: nn.Module, batch: Batch) -> StepResult:
        if self.teacher is None:
            raise ConfigError("semikd needs a teacher: use 'finessl distill --teacher RUN_DIR'")
        cfg = self.config
        a = self.balance.item()
        margins = balanced_margins(self.pace.refresh(), cfg.margin_alpha * a)
        out = forward_views(model, batch, weak_grad=True, aux=True,
                            aux_stop_gradient=cfg.aux_stop_gradient)
        teacher_weak = self.teacher(batch.weak)
        teacher_strong = self.teacher(batch.strong[0])
        target = teacher_weak.softmax(dim=-1)

        loss_x = margin_cross_entropy(out.labeled, batch.labels, margins).mean()
        kd = soft_cross_entropy(out.weak, target).mean()
        kd_aux = soft_cross_entropy(out.weak_aux, target).mean()

        with torch.no_grad():
            student_probs = out.weak.detach().softmax(dim=-1)
            confidence, pseudo = student_probs.max(dim=-1)
            aux_confidence, weight = aux_weights(out.weak_aux, cfg.aux_min_confidence)
            selected = confidence >= cfg.threshold
        loss_u = (weight * margin_cross_entropy(out.strong, pseudo, margins)).mean()
        loss_x_aux, loss_u_aux = decoupled_smoothing_losses(
            out.labeled_aux, batch.labels, out.strong_aux, pseudo, selected, cfg.smoothing)
        self.pace.update(batch.unlabeled_index, pseudo, selected)

        self.steps += 1
        if int(self.steps) % self.balance_every == 0:
            with torch.no_grad():
                teacher_ce = soft_cross_entropy(teacher_strong, target).mean()
                student_ce = soft_cross_entropy(out.strong.detach(), student_probs).mean()
                ratio = (teacher_ce / student_ce.clamp(min=1e-8)).item()
            self.balance.fill_(updated_balance(a, ratio))

        gamma = self.unlabeled_weight
        loss = loss_x + loss_x_aux + gamma * ((1 - a) * (kd + kd_aux) + a * (loss_u + loss_u_aux))
        terms = {"loss_x": loss_x, "loss_x_aux": loss_x_aux, "kd": kd, "kd_aux": kd_aux,
                 "loss_u": loss_u, "loss_u_aux": loss_u_aux}
        logs = {key: value.item() for key, value in terms.items()}
        logs.update({"loss": loss.item(), "balance": a, "mask": selected.float().mean().item(),
                     "conf": confidence.mean().item(), "aux_conf": aux_confidence.mean().item()})
        return StepResult(loss, logs, terms)
