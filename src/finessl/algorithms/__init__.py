"""SSL algorithms: how to pseudo-label, which labels to trust and how much, which loss."""

from finessl.algorithms import (  # noqa: F401  (registration)
    debiaspl,
    finessl,
    fixmatch,
    flexmatch,
    freematch,
    pseudolabel,
    semikd,
    softmatch,
    supervised,
)
from finessl.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Batch,
    Collaboration,
    Needs,
    StepResult,
    algorithm_class,
    build_algorithm,
    trains_aux_head,
)

# What ``finessl distill`` trains: SemiKD's student over the teacher's configuration.
DISTILLATION = semikd.Distillation()

__all__ = ["ALGORITHMS", "DISTILLATION", "Algorithm", "Batch", "Collaboration", "Needs", "StepResult",
           "algorithm_class", "build_algorithm", "trains_aux_head"]
