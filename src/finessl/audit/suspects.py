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
from finessl.audit.row_file import RowFile, blocks_of


@dataclass
class Suspect:
    position: int  # into the labeled arrays
    label: int
    looks_like: int
    score: float  # 1 - out-of-sample probability of the given label


def label_suspects(labeled: np.ndarray, labels: np.ndarray, pool: np.ndarray | RowFile, classes: int,
                   classifier: PrototypeClassifier | None = None, neighbours: int = 10,
                   confident: float = 0.9, skip: np.ndarray | None = None) -> list[Suspect]:
    """Every labeled image with its score, the most suspect first; pool rows ``skip`` (e.g.
    judged out of distribution) never vote. The pool is read a block at a time."""
    labeled = np.asarray(labeled, np.float32)
    classifier = classifier or PrototypeClassifier(labeled, labels, classes)
    loo = classifier.loo_probabilities()
    votes = _votes_without_self(labeled, labels, pool, classes, neighbours, classifier, confident, skip)
    combined = (loo + votes) / 2.0
    rows = np.arange(len(labels))
    scores = 1.0 - combined[rows, labels]
    others = combined.copy()
    others[rows, labels] = -1.0
    order = np.argsort(-scores, kind="stable")
    return [Suspect(int(i), int(labels[i]), int(others[i].argmax()), float(scores[i])) for i in order]


def _votes_without_self(labeled: np.ndarray, labels: np.ndarray, pool, classes: int, k: int,
                        classifier: PrototypeClassifier, confident: float,
                        skip: np.ndarray | None) -> np.ndarray:
    """``[L, C]`` similarity-weighted class votes of each labeled image's ``k`` nearest refs
    other than itself: the other labeled images and the pool images the classifier labels
    with at least ``confident``. The ``k + 1`` nearest so far are merged with each pool
    block's (the labeled rows first, so ties keep them ahead, as one search over all would)."""
    sims, idx = top_k(labeled, labeled, k + 1)
    voted = labels[idx]
    weights = np.maximum(sims, 0.0) * (idx != np.arange(len(labeled))[:, None])
    for start, block in blocks_of(pool):
        block = np.asarray(block, np.float32)
        probs = classifier.probabilities(block)
        sure = probs.max(axis=1) >= confident
        if skip is not None:
            sure &= ~skip[start:start + len(block)]
        if not sure.any():
            continue
        more_sims, more_idx = top_k(labeled, block[sure], k + 1)
        more_labels = probs[sure].argmax(axis=1)[more_idx]
        all_sims = np.concatenate([sims, more_sims], axis=1)
        best = np.argsort(-all_sims, axis=1, kind="stable")[:, :k + 1]
        sims = np.take_along_axis(all_sims, best, axis=1)
        voted = np.take_along_axis(np.concatenate([voted, more_labels], axis=1), best, axis=1)
        weights = np.take_along_axis(np.concatenate([weights, np.maximum(more_sims, 0.0)], axis=1),
                                     best, axis=1)
    votes = np.zeros((len(labeled), classes))
    for column in range(voted.shape[1]):
        np.add.at(votes, (np.arange(len(labeled)), voted[:, column]), weights[:, column])
    return votes / np.maximum(votes.sum(axis=1, keepdims=True), 1e-12)
