"""A nearest-class-mean classifier on features, calibrated without a validation set.

Each class is the unit mean of its labeled features; ``p(y | x) = softmax(s cos(x, mu_y))``
with the scale ``s`` chosen by leave-one-out likelihood on the labeled images themselves
(each scored against prototypes built without it). Its training prior is the labeled
set's class distribution, which the prior estimate needs to know.
"""

from __future__ import annotations

import numpy as np

from finessl.audit.neighbours import normalise

SCALES = np.geomspace(1.0, 200.0, 40)


def class_sums(features: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    sums = np.zeros((classes, features.shape[1]), np.float32)
    np.add.at(sums, labels, np.asarray(features, np.float32))
    return sums


def class_prototypes(features: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Unit mean feature of each class (zero for a class without images)."""
    return normalise(class_sums(features, labels, classes))


def loo_similarities(features: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """``[L, C]`` cosine of each labeled image to every prototype, its own class's prototype
    built without it (zero when it is its class's only image)."""
    features = np.asarray(features, np.float32)
    sums = class_sums(features, labels, classes)
    sims = features @ normalise(sums).T
    own = normalise(sums[labels] - features)
    sims[np.arange(len(labels)), labels] = (features * own).sum(axis=1)
    return sims


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_scale(features: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """The scale ``s`` with the best leave-one-out log-likelihood of the labels."""
    sims = loo_similarities(features, labels, classes)
    best, best_ll = SCALES[0], -np.inf
    for scale in SCALES:
        probs = softmax(scale * sims)
        ll = np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).mean()
        if ll > best_ll:
            best, best_ll = scale, ll
    return float(best)


class PrototypeClassifier:
    """Fitted on labeled features; ``probabilities`` of any features, ``loo_probabilities`` of
    its own labeled images (out-of-sample, for label checks)."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, classes: int) -> None:
        self.features, self.labels, self.classes = features, np.asarray(labels), classes
        self.prototypes = class_prototypes(features, self.labels, classes)
        self.scale = fit_scale(features, self.labels, classes)
        self.train_prior = np.bincount(self.labels, minlength=classes) / max(len(self.labels), 1)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return softmax(self.scale * (np.asarray(features, np.float32) @ self.prototypes.T))

    def loo_probabilities(self) -> np.ndarray:
        return softmax(self.scale * loo_similarities(self.features, self.labels, self.classes))
