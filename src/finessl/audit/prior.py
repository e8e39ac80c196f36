"""The pool's class prior, re-estimated by EM from a classifier's probabilities.

Saerens, Latinne & Decaestecker (Neural Computation, 2002): with ``p(y | x)`` from a
classifier trained under prior ``pi_train``, the pool's prior ``pi`` is the fixed point of
``pi_k = mean_i w_ik``, ``w_ik ∝ p(k | x_i) pi_k / pi_train_k``.
"""

from __future__ import annotations

import numpy as np


def em_prior(probs: np.ndarray, train_prior: np.ndarray, weights: np.ndarray | None = None,
             iterations: int = 500, tol: float = 1e-8) -> np.ndarray:
    """The EM estimate of the class prior of the images ``probs`` describes; ``weights``
    (e.g. each image's chance of belonging to the task at all) weigh the images."""
    probs = np.asarray(probs, np.float64)
    train = np.maximum(np.asarray(train_prior, np.float64), 1e-12)
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, np.float64)
    if len(probs) == 0 or w.sum() <= 0:
        return train / train.sum()
    prior = train / train.sum()
    for _ in range(iterations):
        joint = probs * (prior / train)
        joint /= np.maximum(joint.sum(axis=1, keepdims=True), 1e-300)
        new = (w[:, None] * joint).sum(axis=0) / w.sum()
        if np.abs(new - prior).max() < tol:
            prior = new
            break
        prior = new
    return prior


def missing_classes(prior: np.ndarray, names: list[str], below: float = 0.2) -> list[str]:
    """Classes whose estimated share is under ``below`` of the balanced share."""
    return [name for name, p in zip(names, prior) if p < below / len(names)]
