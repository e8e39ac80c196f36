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
    StepResult,
    algorithm_class,
    build_algorithm,
    trains_aux_head,
)

__all__ = ["ALGORITHMS", "Algorithm", "Batch", "StepResult", "algorithm_class", "build_algorithm",
           "trains_aux_head"]
