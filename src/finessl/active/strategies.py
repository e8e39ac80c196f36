"""Which images to label next: strategies over one forward pass of the unlabeled pool.

Every strategy sees a ``Pool`` — the main head's class probabilities, the features, the
features of what is already labeled, and per-class difficulty — and returns the indices of
the ``budget`` images to label, best first, each with a score. Deterministic for a seed.

* ``random``     uniform;
* ``entropy``    highest entropy of the predicted distribution;
* ``margin``     smallest gap between the two most probable classes;
* ``kcenter``    greedy core-set: repeatedly the image farthest (cosine distance) from
                 everything labeled or already picked;
* ``balanced``   class-balanced uncertainty: the budget is split across classes in
                 proportion to how hard the model finds them (a deficit of confident
                 predictions against the balanced share, low confidence, FineSSL's balanced
                 margins), then within each class the most uncertain images by top-2 margin,
                 skipping near-duplicates (cosine similarity above ``duplicate_similarity``
                 to an image already picked);
* ``typiclust``, ``probcover``  typical and diverse images (``coverage.py``);
* ``auto``       (default) ``typiclust`` while labels are few, ``balanced`` once they are
                 not (``auto_choice``).

Strategies in ``FEATURE_ONLY`` read only features, so they also choose the first labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from finessl.audit.neighbours import fit_space, normalise, top_k
from finessl.audit.row_file import UnitRows
from finessl.errors import FinesslError
from finessl.registry import Registry


@dataclass
class Pool:
    """What the strategies know about the unlabeled pool (N images, C classes). Before any
    model is trained (cold start) there are no probabilities: only the feature strategies
    (``FEATURE_ONLY``) can choose."""

    # arrays in memory, or ``pool_pass.ShardedRows`` read from disk a block at a time
    probs: np.ndarray | None  # [N, C] main-head probabilities (None: no trained model)
    features: np.ndarray  # [N, D] backbone features, float16 or float32
    labeled_features: np.ndarray | None = None  # [L, D] of the images already labeled
    margins: np.ndarray | None = None  # [C] FineSSL's current balanced margins, if any
    confident: float = 0.7  # what counts as a confident prediction
    classes: int | None = None  # C, where there are no probabilities to tell it

    @property
    def num_classes(self) -> int:
        if self.probs is not None:
            return self.probs.shape[1]
        if self.classes is None:
            raise ValueError("a pool without probabilities needs its number of classes")
        return self.classes

    @property
    def labeled(self) -> int:
        return 0 if self.labeled_features is None else len(self.labeled_features)

    def predictions(self, strategy: str) -> np.ndarray:
        """The probabilities, which ``strategy`` needs: an error without a trained model."""
        if self.probs is None:
            raise FinesslError(f"--strategy {strategy} needs a trained model's predictions; before "
                               f"the first run choose {', '.join(FEATURE_ONLY)} (or auto)")
        return self.probs


# The strategies that need only features (they also choose the very first labels).
FEATURE_ONLY = ("random", "kcenter", "typiclust", "probcover")


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


ROW_BLOCK = 65536  # rows of probabilities read at a time


def per_row(rows, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fn`` over ``rows`` (an array, or ``pool_pass.ShardedRows`` on disk) one block at a
    time, so only N scores — never the N x C probabilities — are in memory at once."""
    if len(rows) == 0:
        return fn(np.asarray(rows[0:0]))
    return np.concatenate([fn(np.asarray(rows[i:i + ROW_BLOCK])) for i in range(0, len(rows), ROW_BLOCK)])


def entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)


def top2_margin(probs: np.ndarray) -> np.ndarray:
    ordered = np.sort(probs, axis=1)
    return ordered[:, -1] - (ordered[:, -2] if probs.shape[1] > 1 else 0.0)


@STRATEGIES.register("random")
def random_strategy(pool: Pool, budget: int, rng: np.random.Generator) -> list[Pick]:
    return [Pick(int(i), 0.0, "random") for i in rng.permutation(len(pool.features))[:budget]]


@STRATEGIES.register("entropy")
def entropy_strategy(pool: Pool, budget: int, rng: np.random.Generator) -> list[Pick]:
    return _top(per_row(pool.predictions("entropy"), entropy), budget, rng, "entropy")


@STRATEGIES.register("margin")
def margin_strategy(pool: Pool, budget: int, rng: np.random.Generator) -> list[Pick]:
    return _top(1.0 - per_row(pool.predictions("margin"), top2_margin), budget, rng,
                "small top-2 margin")


@STRATEGIES.register("kcenter")
def kcenter_strategy(pool: Pool, budget: int, rng: np.random.Generator) -> list[Pick]:
    project = fit_space(pool.features)  # unit rows; 128 principal directions above 20,000 rows
    labeled = None if pool.labeled_features is None else project(pool.labeled_features)
    with UnitRows(pool.features, project) as points:
        return kcenter(points, labeled, budget, rng)


def kcenter(points: UnitRows, labeled: np.ndarray | None, budget: int, rng: np.random.Generator,
            chunk: int = 2048) -> list[Pick]:
    """Greedy k-center (core-set) on unit rows: repeatedly the image with the largest cosine
    distance to its nearest labeled-or-picked image. The distances to the labeled set are
    found ``chunk`` rows at a time; each pick then costs one pass over the pool's rows."""
    if labeled is not None and len(labeled):
        refs = normalise(labeled)
        nearest = np.empty(len(points), np.float32)
        for start, rows in points.blocks():
            nearest[start:start + len(rows)] = 1.0 - top_k(rows, refs, 1, chunk)[0][:, 0]
    else:  # nothing labeled yet: start from a random image
        first = int(rng.integers(len(points)))
        nearest = 1.0 - points.dot(points.row(first))
    picks: list[Pick] = []
    for _ in range(min(budget, len(points))):
        candidate = int(np.argmax(nearest))
        picks.append(Pick(candidate, float(nearest[candidate]), "farthest from the labeled set"))
        nearest = np.minimum(nearest, 1.0 - points.dot(points.row(candidate)))
        nearest[candidate] = -np.inf
    return picks


def class_difficulty(pool: Pool) -> np.ndarray:
    """How much each class needs labels, in (0, 1]-ish units, without any test data:
    the deficit of confident predictions against the balanced share, one minus the mean
    confidence of the images predicted as the class, and FineSSL's margins (relative)."""
    probs = pool.predictions("balanced")
    num = probs.shape[1]
    predicted = per_row(probs, lambda p: p.argmax(axis=1))
    confidence = per_row(probs, lambda p: p.max(axis=1))
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
    probs = pool.predictions("balanced")
    predicted, num = per_row(probs, lambda p: p.argmax(axis=1)), probs.shape[1]
    difficulty = class_difficulty(pool)
    allocation = allocate(difficulty, budget, np.bincount(predicted, minlength=num))
    uncertainty = 1.0 - per_row(probs, top2_margin)
    with UnitRows(pool.features, fit_space(pool.features)) as points:  # 128-d above 20,000 rows
        picks, chosen = _balanced_picks(points, predicted, difficulty, allocation, uncertainty,
                                        rng, duplicate_similarity)
    if len(picks) < min(budget, len(predicted)):  # near-duplicates everywhere: fill up
        rest = np.setdiff1d(np.arange(len(predicted)), chosen)
        extra = _top(uncertainty[rest], budget - len(picks), rng, "uncertain")
        picks += [Pick(int(rest[p.index]), p.score, p.reason) for p in extra]
    return picks[:budget]


def _balanced_picks(points: UnitRows, predicted: np.ndarray, difficulty: np.ndarray,
                    allocation: np.ndarray, uncertainty: np.ndarray, rng: np.random.Generator,
                    duplicate_similarity: float) -> tuple[list[Pick], list[int]]:
    """Each class's share, its most uncertain images first, near-duplicates skipped."""
    picks: list[Pick] = []
    chosen: list[int] = []
    taken_rows: list[np.ndarray] = []  # the unit rows of ``chosen``
    spare = 0
    for k in np.argsort(-difficulty, kind="stable"):
        members = np.flatnonzero(predicted == k)
        members = members[rng.permutation(len(members))]
        ranked = members[np.argsort(-uncertainty[members], kind="stable")]
        want, taken = int(allocation[k]) + spare, 0
        for i in ranked:
            if taken == want:
                break
            row = points.row(i)
            if chosen and float((np.stack(taken_rows) @ row).max()) > duplicate_similarity:
                continue  # a near-duplicate of an image already picked
            chosen.append(int(i))
            taken_rows.append(row)
            picks.append(Pick(int(i), float(uncertainty[i]),
                              f"class difficulty {difficulty[k]:.2f}, uncertain"))
            taken += 1
        spare = want - taken  # passed on to the next class
    return picks, chosen


# The default's rule: typical and diverse images while labels are few, class-balanced
# uncertainty beyond. Chosen on a held-out part of the training set, never on a test set
# (docs/results.md#label-next): over frozen features, typiclust beats every other strategy
# for the first labels (up to 4 per class) on both datasets measured, while from 8 per class
# on balanced is ahead on average (on one of the two datasets typiclust kept winning up to
# 20 per class, on the other it lost from 8); the threshold sits between the two.
TYPICAL_UP_TO = 6  # labels per class, counting this round's, up to which typicality is used


def auto_choice(pool: Pool, budget: int) -> tuple[str, str]:
    """(strategy, why) the default uses for this pool and budget."""
    if pool.probs is None:
        return "typiclust", "no trained model yet"
    per_class = (pool.labeled + budget) / pool.num_classes
    return ("typiclust" if per_class <= TYPICAL_UP_TO else "balanced"), f"{per_class:.1f} labels per class"


@STRATEGIES.register("auto")
def auto_strategy(pool: Pool, budget: int, rng: np.random.Generator) -> list[Pick]:
    """The default: ``typiclust`` up to ``TYPICAL_UP_TO`` labels per class (after this
    round), ``balanced`` beyond."""
    name, why = auto_choice(pool, budget)
    picks = STRATEGIES.get(name)(pool, budget, rng)
    return [Pick(p.index, p.score, f"auto -> {name} ({why}): {p.reason}") for p in picks]
