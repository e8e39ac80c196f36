"""Out-of-distribution scores of pool images, and the estimated share of such images.

A score is higher for an image less like the labeled set (the task's classes). The
default, ``propagation``, is transductive: the labeled images' "in the task" mass spreads
over a k-nearest-neighbour graph of all the images (Zhou et al., NeurIPS 2004, "Learning
with local and global consistency"), so a foreign class that forms its own cluster gets
little of it even where single images lie close to a labeled one; ``knn`` and
``prototype`` score each image alone. A scorer is prepared once for all the images, so
the graph is built once and every held-out split only seeds other nodes. The share
is a positive-unlabeled mixture-proportion estimate: the labeled images are a sample of
the in-distribution scores, so for any threshold t the pool's in-distribution share is at
most ``P_pool(s <= t) / P_labeled(s <= t)`` (the bound behind the "best bin estimation"
of Garg et al., NeurIPS 2021). To compare like with like, the labeled images used as that
sample are scored against the other half of the labeled set, together with the pool.
Where the pool's classes are far from balanced the labeled images are not a fair sample
of its in-distribution scores, and the share comes out too high (docs/results.md).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from finessl.audit.neighbours import fit_space, nearest, top_k
from finessl.audit.prototypes import class_prototypes
from finessl.audit.row_file import BLOCK, RowFile, UnitRows, part
from finessl.registry import Registry

# A scorer over one fixed set of rows, the labeled images first and then the pool:
# ``scorer(refs, held)`` -> scores of ``labeled[held]`` then of every pool image, when the
# labeled images ``refs`` stand for the task. Higher = more foreign.
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]
# name -> (features [L + N, D], L, labels [L], classes) -> Scorer
OOD_SCORES: Registry[Callable[..., Scorer]] = Registry("OOD score")


def per_image(score: Callable[..., np.ndarray]) -> Callable[..., Scorer]:
    """A scorer from a score of each image on its own, ``score(queries, refs, labels, classes)``."""

    def prepare(features, count: int, labels: np.ndarray, classes: int) -> Scorer:
        labeled, pool = np.asarray(features[0:count], np.float32), part(features, count)

        def scorer(refs: np.ndarray, held: np.ndarray) -> np.ndarray:
            against = (labeled[refs], labels[refs], classes)
            return np.concatenate([score(labeled[held], *against), score(pool, *against)])

        return scorer

    prepare.__doc__ = score.__doc__
    return prepare


def knn_distance(queries: np.ndarray, refs: np.ndarray, labels: np.ndarray, classes: int,
                 k: int = 1) -> np.ndarray:
    """One minus the cosine similarity to the nearest labeled image(s)."""
    if len(queries) == 0:
        return np.zeros(0)
    sims, _ = top_k(queries, refs, k)
    return 1.0 - sims.mean(axis=1)


def prototype_distance(queries: np.ndarray, refs: np.ndarray, labels: np.ndarray,
                       classes: int) -> np.ndarray:
    """One minus the cosine similarity to the nearest class prototype (mean labeled feature)."""
    if len(queries) == 0:
        return np.zeros(0)
    sims, _ = top_k(queries, class_prototypes(refs, labels, classes), 1)
    return 1.0 - sims[:, 0]


OOD_SCORES.register("knn")(per_image(knn_distance))
OOD_SCORES.register("prototype")(per_image(prototype_distance))


class PropagationGraph:
    """The symmetric kNN graph of every image, labeled and pool (edge weight: cosine^power),
    built once: each scoring seeds a different set of labeled images on the same graph.
    Arrays of ``N x neighbours`` (indices int32, weights float32) are all it holds."""

    def __init__(self, features: np.ndarray | RowFile, neighbours: int = 10, power: float = 3.0,
                 seed: int = 0) -> None:
        project = fit_space(features, seed=seed)  # many wide rows: 128 principal directions
        if isinstance(features, RowFile):
            with UnitRows(features, project) as nodes:
                sims, self.idx = nearest(nodes, neighbours, seed=seed)
        else:
            sims, self.idx = nearest(project(features), neighbours, seed=seed)
        self.size = len(features)
        np.maximum(sims, 0.0, out=sims)
        self.weights = np.power(sims, power, out=sims)
        degree = self.weights.sum(axis=1, dtype=np.float64)
        for lo in range(0, self.size, BLOCK):  # and the weights of the nodes choosing each node
            degree += np.bincount(self.idx[lo:lo + BLOCK].ravel(),
                                  weights=self.weights[lo:lo + BLOCK].ravel(), minlength=self.size)
        self.scale = 1.0 / np.sqrt(np.maximum(degree, 1e-12))

    def spread(self, seeds: np.ndarray, alpha: float = 0.99, iterations: int = 50,
               block: int = BLOCK) -> np.ndarray:
        """Each node's mass when ``seeds`` (mass 1) spread it, ``f <- alpha S f + (1 - alpha) y``
        with ``S`` the degree-normalised graph, divided by the square root of its degree."""
        start = np.zeros(self.size)
        start[seeds] = 1.0
        mass = start.copy()
        for _ in range(iterations):
            spread = mass * self.scale
            out = np.zeros(self.size)
            for lo in range(0, self.size, block):  # W f a block of nodes at a time
                idx, weights = self.idx[lo:lo + block], self.weights[lo:lo + block]
                out[lo:lo + len(idx)] += (weights * spread[idx]).sum(axis=1)  # own neighbours
                out += np.bincount(idx.ravel(), weights=(weights * spread[lo:lo + len(idx), None]).ravel(),
                                   minlength=self.size)  # and the nodes that chose them
            mass = alpha * self.scale * out + (1 - alpha) * start
        return mass * self.scale


@OOD_SCORES.register("propagation")
def propagation_scorer(features: np.ndarray | RowFile, count: int, labels: np.ndarray,
                       classes: int) -> Scorer:
    """Minus the mass each image receives when the labeled images ``refs`` (mass 1) spread it
    over a symmetric kNN graph of all the images (10 neighbours, edge weight cosine^3,
    ``alpha`` 0.99, 50 steps), divided by the square root of its degree. Constants chosen
    on held-out pools (docs/results.md)."""
    graph = PropagationGraph(features)

    def scorer(refs: np.ndarray, held: np.ndarray) -> np.ndarray:
        received = -graph.spread(np.asarray(refs, np.int64))
        return np.concatenate([received[np.asarray(held, np.int64)], received[count:]])

    return scorer


def ood_scores(score: str, queries: np.ndarray, refs: np.ndarray, labels: np.ndarray,
               classes: int) -> np.ndarray:
    """The score of each query image against the labeled images ``refs`` (in memory)."""
    features = np.concatenate([np.asarray(refs, np.float32), np.asarray(queries, np.float32)])
    scorer = OOD_SCORES.get(score)(features, len(refs), labels, classes)
    return scorer(np.arange(len(refs)), np.zeros(0, np.int64))


def halves(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stratified two-way split of the labeled images (each class split in half)."""
    rng = np.random.default_rng(seed)
    first = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        first[members[: (len(members) + 1) // 2]] = True
    return np.flatnonzero(first), np.flatnonzero(~first)


def in_distribution_share(pool_scores: np.ndarray, labeled_scores: np.ndarray,
                          min_coverage: float = 0.5) -> float:
    """The in-distribution share of the pool: for each threshold ``t`` at a labeled score
    keeping at least ``min_coverage`` of the labeled images, ``P_pool(s <= t) /
    P_labeled(s <= t)`` bounds it from above; with a few dozen labeled images the smallest
    of these ratios (BBE's choice) is mostly noise, so the median is taken."""
    labeled = np.sort(labeled_scores)
    pool = np.sort(pool_scores)
    ratios = []
    for rank in range(int(np.ceil(min_coverage * len(labeled))) - 1, len(labeled)):
        covered = (rank + 1) / len(labeled)
        share = np.searchsorted(pool, labeled[rank], side="right") / max(len(pool), 1)
        ratios.append(share / covered)
    return float(np.clip(np.median(ratios), 0.0, 1.0)) if ratios else 1.0


def ood_fraction(score: str, pool: np.ndarray, labeled: np.ndarray, labels: np.ndarray,
                 classes: int, seed: int = 0, splits: int = 3) -> tuple[float, np.ndarray]:
    """(estimated share 0-1 of pool images outside the labeled classes, each labeled image's
    mean score when held out): ``ood_check`` on arrays in memory."""
    features = np.concatenate([np.asarray(labeled, np.float32), np.asarray(pool, np.float32)])
    _, fraction, held = ood_check(score, features, len(labeled), labels, classes, seed, splits)
    return fraction, held


def ood_check(score: str, features: np.ndarray | RowFile, count: int, labels: np.ndarray,
              classes: int, seed: int = 0, splits: int = 3) -> tuple[np.ndarray, float, np.ndarray]:
    """(each pool image's score against every labeled image, the estimated share 0-1 of pool
    images outside the labeled classes, each labeled image's mean score when held out) for
    ``features``: the ``count`` labeled rows, then the pool's. ``splits`` random halvings of
    the labeled set; each half in turn is held out and scored together with the pool against
    the other half. One scorer serves all of them (one graph for ``propagation``)."""
    scorer = OOD_SCORES.get(score)(features, count, labels, classes)
    pool_scores = scorer(np.arange(count), np.zeros(0, np.int64))
    shares, held_sum, held_count = [], np.zeros(count), np.zeros(count)
    for split in range(splits):
        first, second = halves(labels, seed + split)
        if min(len(first), len(second)) == 0:
            return pool_scores, 0.0, np.zeros(count)
        for refs, held in ((first, second), (second, first)):
            scores = scorer(refs, held)
            shares.append(in_distribution_share(scores[len(held):], scores[:len(held)]))
            held_sum[held] += scores[:len(held)]
            held_count[held] += 1
    return pool_scores, 1.0 - float(np.mean(shares)), held_sum / np.maximum(held_count, 1)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for telling ``positive`` apart (ties count half)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
