"""Out-of-distribution scores of pool images, and the estimated share of such images.

A score is higher for an image less like the labeled set (the task's classes). The
default, ``propagation``, is transductive: the labeled images' "in the task" mass spreads
over a k-nearest-neighbour graph of all the images (Zhou et al., NeurIPS 2004, "Learning
with local and global consistency"), so a foreign class that forms its own cluster gets
little of it even where single images lie close to a labeled one; ``knn`` and
``prototype`` score each image alone. The share
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

from finessl.audit.neighbours import search_space, top_k
from finessl.audit.prototypes import class_prototypes
from finessl.registry import Registry

# A score: (queries [Q, D], refs [R, D], ref labels [R], classes) -> [Q], higher = more foreign.
OOD_SCORES: Registry[Callable[..., np.ndarray]] = Registry("OOD score")


@OOD_SCORES.register("knn")
def knn_distance(queries: np.ndarray, refs: np.ndarray, labels: np.ndarray, classes: int,
                 k: int = 1) -> np.ndarray:
    """One minus the cosine similarity to the nearest labeled image(s)."""
    sims, _ = top_k(queries, refs, k)
    return 1.0 - sims.mean(axis=1)


@OOD_SCORES.register("propagation")
def propagation_distance(queries: np.ndarray, refs: np.ndarray, labels: np.ndarray, classes: int,
                         neighbours: int = 10, power: float = 3.0, alpha: float = 0.99,
                         iterations: int = 50) -> np.ndarray:
    """Minus the mass each query receives when the labeled images (mass 1) spread it over a
    symmetric kNN graph of refs + queries, ``f <- alpha S f + (1 - alpha) y`` with ``S`` the
    degree-normalised graph (edge weight: cosine^power), divided by the square root of the
    query's degree. Constants chosen on held-out pools (docs/results.md)."""
    nodes = search_space(np.concatenate([np.asarray(refs, np.float32), np.asarray(queries, np.float32)]))
    n = len(nodes)
    sims, idx = top_k(nodes, nodes, neighbours, skip_self=True)
    weights = np.maximum(sims, 0.0) ** power
    degree = weights.sum(axis=1) + np.bincount(idx.ravel(), weights=weights.ravel(), minlength=n)
    scale = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    seeds = np.zeros(n)
    seeds[: len(refs)] = 1.0
    mass = seeds.copy()
    for _ in range(iterations):
        spread = mass * scale
        out = (weights * spread[idx]).sum(axis=1)  # W f over each node's own neighbours
        out += np.bincount(idx.ravel(), weights=(weights * spread[:, None]).ravel(), minlength=n)
        mass = alpha * scale * out + (1 - alpha) * seeds
    return -(mass * scale)[len(refs):]


@OOD_SCORES.register("prototype")
def prototype_distance(queries: np.ndarray, refs: np.ndarray, labels: np.ndarray,
                       classes: int) -> np.ndarray:
    """One minus the cosine similarity to the nearest class prototype (mean labeled feature)."""
    sims, _ = top_k(queries, class_prototypes(refs, labels, classes), 1)
    return 1.0 - sims[:, 0]


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
    mean score when held out). ``splits`` random halvings of the labeled set; each half in
    turn is held out and scored together with the pool against the other half."""
    fn = OOD_SCORES.get(score)
    shares, held_sum, held_count = [], np.zeros(len(labeled)), np.zeros(len(labeled))
    for split in range(splits):
        first, second = halves(labels, seed + split)
        if min(len(first), len(second)) == 0:
            return 0.0, np.zeros(len(labeled))
        for refs, held in ((first, second), (second, first)):
            scores = fn(np.concatenate([labeled[held], pool]), labeled[refs], labels[refs], classes)
            shares.append(in_distribution_share(scores[len(held):], scores[:len(held)]))
            held_sum[held] += scores[:len(held)]
            held_count[held] += 1
    return 1.0 - float(np.mean(shares)), held_sum / np.maximum(held_count, 1)


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
