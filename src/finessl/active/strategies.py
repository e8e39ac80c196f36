"""Which images to label next: strategies over one forward pass of the unlabeled pool.

Every strategy sees a ``Pool`` — the main head's class probabilities, the features, the
features of what is already labeled, and per-class difficulty — and returns the indices of
the ``budget`` images to label, best first, each with a score. Deterministic for a seed.

* ``random``     uniform;
* ``entropy``    highest entropy of the predicted distribution;
* ``margin``     smallest gap between the two most probable classes;
* ``kcenter``    greedy core-set: repeatedly the image farthest (cosine distance) from
                 everything labeled or already picked;
* ``balanced``   (default) class-balanced uncertainty: the budget is split across classes in
                 proportion to how hard the model finds them (a deficit of confident
                 predictions against the balanced share, low confidence, FineSSL's balanced
                 margins), then within each class the most uncertain images by top-2 margin,
                 skipping near-duplicates (cosine similarity above ``duplicate_similarity``
                 to an image already picked).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from finessl.registry import Registry


@dataclass
class Pool:
    """What the strategies know about the unlabeled pool (N images, C classes)."""

    probs: np.ndarray  # [N, C] main-head probabilities
    features: np.ndarray  # [N, D] backbone features
    labeled_features: np.ndarray | None = None  # [L, D] of the images already labeled
    margins: np.ndarray | None = None  # [C] FineSSL's current balanced margins, if any
    confident: float = 0.7  # what counts as a confident prediction

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


@dataclass
class Pick:
    index: int  # into the pool
    score: float
    reason: str


Strategy = Callable[[Pool, int, np.random.Generator], list[Pick]]
STRATEGIES: Registry[Strategy] = Registry("suggestion strategy")


def _top(scores: np.ndarray, budget: int, rng: np.random.Generator, reason: str) -> list[Pick]:
    """The ``budget`` highest scores; ties broken by a seeded shuffle."""
    order = rng.permutation(len(scores))
    ranked = order[np.argsort(-scores[order], kind="stable")][:budget]
    return [Pick(int(i), float(scores[i]), reason) for i in ranked]


def entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)


def top2_margin(probs: np.ndarray) -> np.ndarray:
    ordered = np.sort(probs, axis=1)
    return ordered[:, -1] - (ordered[:, -2] if probs.shape[1] > 1 else 0.0)


def _normalised(features: np.ndarray) -> np.ndarray:
    return features / np.clip(np.linalg.norm(features, axis=1, keepdims=True), 1e-12, None)


@STRATEGIES.register("random")
def random_strategy(pool: Pool, budget: int, rng: np.random.Generator) -> list[Pick]:
    return [Pick(int(i), 0.0, "random") for i in rng.permutation(len(pool.probs))[:budget]]


@STRATEGIES.register("entropy")
def entropy_strategy(pool: Pool, budget: int, rng: np.random.Generator) -> list[Pick]:
    return _top(entropy(pool.probs), budget, rng, "entropy")


@STRATEGIES.register("margin")
def margin_strategy(pool: Pool, budget: int, rng: np.random.Generator) -> list[Pick]:
    return _top(1.0 - top2_margin(pool.probs), budget, rng, "small top-2 margin")


@STRATEGIES.register("kcenter")
def kcenter_strategy(pool: Pool, budget: int, rng: np.random.Generator) -> list[Pick]:
    """Greedy k-center (core-set): cosine distance to the nearest labeled-or-picked image."""
    points = _normalised(pool.features)
    if pool.labeled_features is not None and len(pool.labeled_features):
        centers = _normalised(pool.labeled_features)
        nearest = 1.0 - (points @ centers.T).max(axis=1)
    else:  # nothing labeled yet: start from a random image
        first = int(rng.integers(len(points)))
        nearest = 1.0 - points @ points[first]
    picks: list[Pick] = []
    for _ in range(min(budget, len(points))):
        candidate = int(np.argmax(nearest))
        picks.append(Pick(candidate, float(nearest[candidate]), "farthest from the labeled set"))
        nearest = np.minimum(nearest, 1.0 - points @ points[candidate])
        nearest[candidate] = -np.inf
    return picks


def class_difficulty(pool: Pool) -> np.ndarray:
    """How much each class needs labels, in (0, 1]-ish units, without any test data:
    the deficit of confident predictions against the balanced share, one minus the mean
    confidence of the images predicted as the class, and FineSSL's margins (relative)."""
    num = pool.probs.shape[1]
    predicted, confidence = pool.predicted, pool.probs.max(axis=1)
    confident = np.bincount(predicted[confidence >= pool.confident], minlength=num).astype(float)
    share = confident / max(1.0, confident.sum())
    deficit = np.clip(1.0 - share * num, 0.0, 1.0)  # 1: none selected, 0: at/above its share
    mean_conf = np.array([confidence[predicted == k].mean() if (predicted == k).any() else 0.0
                          for k in range(num)])
    parts = [deficit, 1.0 - mean_conf]
    if pool.margins is not None and np.max(pool.margins) > 0:
        parts.append(np.asarray(pool.margins, dtype=float) / np.max(pool.margins))
    return np.mean(parts, axis=0) + 1e-3  # every class keeps a small share


def allocate(weights: np.ndarray, budget: int, capacity: np.ndarray) -> np.ndarray:
    """Integer split of ``budget`` in proportion to ``weights`` (largest remainders), never
    more than ``capacity`` per class; what a full class cannot take goes to the others."""
    counts = np.zeros(len(weights), dtype=int)
    remaining = min(budget, int(capacity.sum()))
    while remaining > 0:
        open_ = counts < capacity
        share = np.where(open_, weights, 0.0)
        if share.sum() <= 0:
            share = open_.astype(float)
        exact = remaining * share / share.sum()
        add = np.minimum(np.floor(exact).astype(int), capacity - counts)
        if add.sum() == 0:  # hand out the largest remainders one at a time
            order = np.argsort(-(exact - np.floor(exact)), kind="stable")
            add = np.zeros_like(counts)
            for k in order:
                if open_[k] and add.sum() < remaining:
                    add[k] = 1
        counts += add
        remaining -= int(add.sum())
    return counts


@STRATEGIES.register("balanced")
def balanced_strategy(pool: Pool, budget: int, rng: np.random.Generator,
                      duplicate_similarity: float = 0.98) -> list[Pick]:
    predicted = pool.predicted
    num = pool.probs.shape[1]
    difficulty = class_difficulty(pool)
    allocation = allocate(difficulty, budget, np.bincount(predicted, minlength=num))
    uncertainty = 1.0 - top2_margin(pool.probs)
    points = _normalised(pool.features)
    picks: list[Pick] = []
    chosen: list[int] = []
    spare = 0
    for k in np.argsort(-difficulty, kind="stable"):
        members = np.flatnonzero(predicted == k)
        members = members[rng.permutation(len(members))]
        ranked = members[np.argsort(-uncertainty[members], kind="stable")]
        want, taken = int(allocation[k]) + spare, 0
        for i in ranked:
            if taken == want:
                break
            if chosen and float((points[chosen] @ points[i]).max()) > duplicate_similarity:
                continue  # a near-duplicate of an image already picked
            chosen.append(int(i))
            picks.append(Pick(int(i), float(uncertainty[i]),
                              f"class difficulty {difficulty[k]:.2f}, uncertain"))
            taken += 1
        spare = want - taken  # passed on to the next class
    if len(picks) < min(budget, len(predicted)):  # near-duplicates everywhere: fill up
        rest = np.setdiff1d(np.arange(len(predicted)), chosen)
        extra = _top(uncertainty[rest], budget - len(picks), rng, "uncertain")
        picks += [Pick(int(rest[p.index]), p.score, p.reason) for p in extra]
    return picks[:budget]
