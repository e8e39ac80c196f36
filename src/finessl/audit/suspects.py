"""Seed labels that look wrong: the label disagrees with the image's neighbourhood.

The idea of confident learning (Northcutt et al., JAIR 2021; cleanlab): rank labeled
images by an out-of-sample probability of their own label, lowest first. Two out-of-sample
views are averaged: the prototype classifier with the image left out of its class, and a
similarity-weighted vote of its nearest neighbours among the other labeled images and the
pool images the classifier labels confidently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from finessl.audit.neighbours import top_k
from finessl.audit.prototypes import PrototypeClassifier


@dataclass
class Suspect:
    position: int  # into the labeled arrays
    label: int
    looks_like: int
    score: float  # 1 - out-of-sample probability of the given label


def label_suspects(labeled: np.ndarray, labels: np.ndarray, pool: np.ndarray, classes: int,
                   classifier: PrototypeClassifier | None = None, neighbours: int = 10,
                   confident: float = 0.9) -> list[Suspect]:
    """Every labeled image with its score, the most suspect first."""
    classifier = classifier or PrototypeClassifier(labeled, labels, classes)
    loo = classifier.loo_probabilities()
    pool_probs = classifier.probabilities(pool) if len(pool) else np.zeros((0, classes))
    sure = pool_probs.max(axis=1) >= confident if len(pool) else np.zeros(0, bool)
    refs = np.concatenate([np.asarray(labeled, np.float32), np.asarray(pool[sure], np.float32)])
    ref_labels = np.concatenate([labels, pool_probs[sure].argmax(axis=1)]).astype(np.int64)
    # Leave-one-out: the labeled rows come first in refs, so a query never votes for itself.
    votes = _votes_without_self(labeled, refs, ref_labels, classes, neighbours)
    combined = (loo + votes) / 2.0
    rows = np.arange(len(labels))
    scores = 1.0 - combined[rows, labels]
    others = combined.copy()
    others[rows, labels] = -1.0
    order = np.argsort(-scores, kind="stable")
    return [Suspect(int(i), int(labels[i]), int(others[i].argmax()), float(scores[i])) for i in order]


def _votes_without_self(labeled, refs, ref_labels, classes: int, k: int) -> np.ndarray:
    """``[L, C]`` similarity-weighted class votes of each labeled image's ``k`` nearest refs
    other than itself (the labeled images are the first rows of ``refs``)."""
    sims, idx = top_k(labeled, refs, k + 1)
    weights = np.maximum(sims, 0.0) * (idx != np.arange(len(labeled))[:, None])
    votes = np.zeros((len(labeled), classes))
    for column in range(idx.shape[1]):
        np.add.at(votes, (np.arange(len(labeled)), ref_labels[idx[:, column]]), weights[:, column])
    return votes / np.maximum(votes.sum(axis=1, keepdims=True), 1e-12)
