"""Typical and diverse picks for small budgets: TypiClust and ProbCover in feature space.

With a few labels per class a model's uncertainty is mostly noise; what the first labels
need is images that are *typical* of a dense region of the data and that *cover* different
regions (Hacohen, Dekel & Weinshall, ICML 2022; Yehuda et al., NeurIPS 2022). Both
strategies read only features — the pretrained backbone's or a run's — so they also choose
the very first labels, before any model is trained (``finessl suggest`` without ``--run``).

* ``typiclust``  k-means into (labeled + budget) clusters; repeatedly the largest cluster
                 with the fewest labels gives its most typical image (highest inverse mean
                 distance to its 20 nearest neighbours in the cluster);
* ``probcover``  a ball of radius delta around every image, delta the largest radius at
                 which 95 % of the balls stay inside one k-means cluster (C clusters); greedy
                 maximum coverage: repeatedly the image whose ball holds the most images not
                 yet covered by a labeled or picked image.

Memory stays bounded for a million-image pool: features are kept as given (float16 or
float32), projected to 128 dimensions above 2,000 rows (``fit_space``), and every
distance computation is chunked — never an N x N or N x labeled matrix. TypiClust's
projected rows wait on disk (``UnitRows``) once the pool is larger than ``KMEANS_SAMPLE``:
k-means is fitted on a seeded sample of that many, every row assigned a block at a time,
and typicality is measured against at most ``TYPICALITY_REFS`` members of a cluster read
back from the file. ProbCover's graph is built on a seeded sample of at most
``COVER_SAMPLE`` images (each ball capped at its ``BALL_CAP`` nearest), which is what
makes it linear in the pool.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from sklearn.cluster import KMeans, MiniBatchKMeans

from finessl.active.strategies import STRATEGIES, Pick, Pool
from finessl.audit.neighbours import fit_space, top_k
from finessl.audit.row_file import UnitRows

NEIGHBOURS = 20  # TypiClust's k for typicality
MIN_CLUSTER = 5  # TypiClust skips clusters smaller than this
MAX_CLUSTERS = 500  # and caps their number (the authors' settings)
TYPICALITY_REFS = 4000  # members a typicality is measured against (a seeded sample above)
TYPICALITY_QUERIES = 20000  # members scored per cluster (a seeded sample above)
PURITY = 0.95  # ProbCover's ball purity
COVER_SAMPLE = 20000  # images ProbCover's graph is built on
BALL_CAP = 1000  # nearest images a ball may hold
PROJECT_ABOVE = 2000  # pools of more rows are clustered in 128 principal directions
MINI_BATCH_ABOVE = 20000  # pools of more rows use mini-batch k-means
KMEANS_SAMPLE = 100_000  # TypiClust's k-means is fitted on a seeded sample of this many rows
CHUNK = 2048


def spaces(pool: Pool, seed: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pool, labeled) features as unit float32 rows of one search space: for pools above
    ``PROJECT_ABOVE`` rows the top 128 principal directions (k-means and the ball graph cost
    10x less on 1,280-d features; the clusters barely move). ``rows``: only these pool rows
    (in this order), the others are never projected."""
    project = fit_space(pool.features, above=PROJECT_ABOVE, seed=seed)
    labeled = pool.labeled_features
    chosen = pool.features if rows is None else np.asarray(pool.features[rows])
    return project(chosen), project(labeled if labeled is not None else
                                    np.zeros((0, pool.features.shape[1]), np.float32))


def kmeans(points: np.ndarray, clusters: int, seed: int) -> tuple[np.ndarray, KMeans | MiniBatchKMeans]:
    """Cluster labels of ``points`` and the fitted model (mini-batch above ``MINI_BATCH_ABOVE``)."""
    clusters = max(1, min(clusters, len(points)))
    if len(points) > MINI_BATCH_ABOVE:
        model = MiniBatchKMeans(clusters, random_state=seed, n_init=3, batch_size=4096)
    else:  # k-means++ seeding, one run (scikit-learn's own default for it)
        model = KMeans(clusters, random_state=seed, n_init=1)
    return model.fit_predict(points).astype(np.int64), model


def distances_to_neighbours(queries: np.ndarray, refs: np.ndarray, k: int,
                            same: np.ndarray) -> np.ndarray:
    """Mean Euclidean distance of each query (unit rows) to its ``k`` nearest refs;
    ``same[q]`` is the ref index that is query ``q`` itself (-1: none), never a neighbour."""
    sims, idx = top_k(queries, refs, k + 1, CHUNK)  # one spare for the query itself
    keep = idx != same[:, None]
    keep &= np.cumsum(keep, axis=1) <= k
    distances = np.sqrt(np.clip(2.0 - 2.0 * sims, 0.0, None))
    return (distances * keep).sum(axis=1) / np.maximum(keep.sum(axis=1), 1)


def typicality(points: np.ndarray | UnitRows, members: np.ndarray, rng: np.random.Generator,
               k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """(scored members, their typicality) for one cluster: 1 / mean distance to the ``k``
    nearest other members (of a seeded sample of at most ``TYPICALITY_REFS``)."""
    queries = members if len(members) <= TYPICALITY_QUERIES else \
        np.sort(rng.choice(members, TYPICALITY_QUERIES, replace=False))
    refs = members if len(members) <= TYPICALITY_REFS else \
        np.sort(rng.choice(members, TYPICALITY_REFS, replace=False))
    if len(refs) < 2:
        return queries, np.ones(len(queries))
    at = np.minimum(np.searchsorted(refs, queries), len(refs) - 1)  # both sorted
    same = np.where(refs[at] == queries, at, -1)
    spread = distances_to_neighbours(points[queries], points[refs], k, same)
    return queries, 1.0 / np.maximum(spread, 1e-8)


def pool_clusters(points: np.ndarray | UnitRows, clusters: int,
                  seed: int) -> tuple[np.ndarray, KMeans | MiniBatchKMeans]:
    """(cluster of every pool row as int32, the fitted model). Rows in memory are clustered
    whole; rows on disk (a pool above ``KMEANS_SAMPLE``) by k-means fitted on a seeded sample
    of that many, every row then assigned to its nearest centre a block at a time, so a pool
    of millions never sits in memory (at most ``MAX_CLUSTERS`` clusters: 200 sample rows a
    cluster or more)."""
    if isinstance(points, np.ndarray):
        labels, model = kmeans(points, clusters, seed)
        return labels.astype(np.int32), model
    size = min(KMEANS_SAMPLE, len(points))
    sample = np.sort(np.random.default_rng(seed).choice(len(points), size, replace=False))
    _, model = kmeans(points[sample], clusters, seed)
    labels = np.empty(len(points), np.int32)
    for start, rows in points.blocks():
        labels[start:start + len(rows)] = model.predict(rows)
    return labels, model


@STRATEGIES.register("typiclust")
def typiclust_strategy(pool: Pool, budget: int, rng: np.random.Generator) -> list[Pick]:
    seed = int(rng.integers(2**31))
    project = fit_space(pool.features, above=PROJECT_ABOVE, seed=seed)
    labeled = project(pool.labeled_features if pool.labeled_features is not None else
                      np.zeros((0, pool.features.shape[1]), np.float32))
    with UnitRows(pool.features, project) as on_disk:
        # a pool k-means sees whole is read into memory once; a larger one stays on disk
        points = on_disk[np.arange(len(on_disk))] if len(on_disk) <= KMEANS_SAMPLE else on_disk
        budget = min(budget, len(on_disk))
        clusters, model = pool_clusters(points, min(len(labeled) + budget, MAX_CLUSTERS), seed)
        return _typical_picks(points, clusters, model, labeled, budget, rng)


def _typical_picks(points: np.ndarray | UnitRows, clusters: np.ndarray, model, labeled: np.ndarray,
                   budget: int, rng: np.random.Generator) -> list[Pick]:
    """Repeatedly the largest cluster with the fewest labels gives its most typical image."""
    count = int(clusters.max()) + 1
    sizes = np.bincount(clusters, minlength=count)
    covered = np.bincount(model.predict(labeled), minlength=count) if len(labeled) else np.zeros(count, int)
    taken = np.zeros(len(clusters), dtype=bool)
    scored: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    picks: list[Pick] = []
    while len(picks) < budget:
        open_ = np.flatnonzero(np.bincount(clusters[~taken], minlength=count) > 0)
        big = open_[sizes[open_] >= MIN_CLUSTER]
        candidates = big if len(big) else open_  # tiny clusters only when nothing else is left
        fewest = candidates[covered[candidates] == covered[candidates].min()]
        cluster = int(fewest[np.argmax(sizes[fewest])])
        if cluster not in scored:
            scored[cluster] = typicality(points, np.flatnonzero(clusters == cluster), rng)
        members, scores = scored[cluster]
        free = ~taken[members]
        if not free.any():  # every scored member taken: score the rest of the cluster
            rest = np.flatnonzero((clusters == cluster) & ~taken)
            scored[cluster] = members, scores = typicality(points, rest, rng)
            free = np.ones(len(members), dtype=bool)
        best = int(np.flatnonzero(free)[np.argmax(scores[free])])
        index = int(members[best])
        taken[index] = True
        covered[cluster] += 1
        picks.append(Pick(index, float(scores[best]),
                          f"most typical of cluster {cluster} ({sizes[cluster]} images, "
                          f"{covered[cluster] - 1} labeled before)"))
    return picks


def nearest_other_cluster(points: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Euclidean distance of each point to the nearest point of another cluster (chunked)."""
    ref = torch.from_numpy(np.ascontiguousarray(points, np.float32))
    labels = torch.from_numpy(clusters)
    out = []
    for start in range(0, len(points), CHUNK):
        sims = ref[start:start + CHUNK] @ ref.T
        sims[labels[start:start + CHUNK, None] == labels[None, :]] = -np.inf
        out.append(torch.sqrt(torch.clamp(2 - 2 * sims.max(dim=1).values, min=0)).numpy())
    return np.concatenate(out)


def ball_radius(points: np.ndarray, classes: int, seed: int, purity: float = PURITY) -> float:
    """ProbCover's delta: the largest radius at which a ``purity`` share of the balls hold
    only points of their own k-means cluster (``classes`` clusters). A ball of radius d
    around x is pure exactly when x's nearest point of another cluster is farther than d,
    so delta is the (1 - purity) quantile of those distances."""
    clusters, _ = kmeans(points, classes, seed)
    if clusters.max() == 0:
        return 2.0  # one cluster: every ball is pure
    return float(np.quantile(nearest_other_cluster(points, clusters), 1.0 - purity))


def within(radius: float) -> float:
    """The cosine similarity from which unit rows are within Euclidean ``radius``
    (|a - b|^2 = 2 - 2 a.b)."""
    return 1.0 - radius * radius / 2.0


def balls(points: np.ndarray, radius: float) -> sparse.csr_matrix:
    """Row j: the points within ``radius`` of point j (itself included, at most ``BALL_CAP``)."""
    sims, idx = top_k(points, points, min(BALL_CAP, len(points)), CHUNK)
    inside = sims >= within(radius)
    rows = np.repeat(np.arange(len(points)), inside.sum(axis=1))
    ones = np.ones(len(rows), dtype=np.float32)
    return sparse.csr_matrix((ones, (rows, idx[inside])), shape=(len(points), len(points)))


def covered_by(points: np.ndarray, centres: np.ndarray, radius: float) -> np.ndarray:
    """Which points lie within ``radius`` of any of ``centres`` (chunked)."""
    if len(centres) == 0:
        return np.zeros(len(points), dtype=bool)
    sims, _ = top_k(points, centres, 1, CHUNK)
    return sims[:, 0] >= within(radius)


@STRATEGIES.register("probcover")
def probcover_strategy(pool: Pool, budget: int, rng: np.random.Generator) -> list[Pick]:
    seed = int(rng.integers(2**31))
    size = len(pool.features)
    sample = np.arange(size) if size <= COVER_SAMPLE else \
        np.sort(rng.choice(size, COVER_SAMPLE, replace=False))
    space, labeled = spaces(pool, seed, sample)  # the graph's sample only
    radius = ball_radius(space, pool.num_classes, seed)
    graph = balls(space, radius)
    by_member = graph.tocsc()
    uncovered = ~covered_by(space, labeled, radius)
    gain = np.asarray(graph @ uncovered.astype(np.float32)).ravel()
    picks: list[Pick] = []
    taken = np.zeros(len(space), dtype=bool)
    for _ in range(min(budget, len(space))):
        order = rng.permutation(len(space))  # ties broken by a seeded shuffle
        candidates = order[~taken[order]]
        best = int(candidates[np.argmax(gain[candidates])])
        newly = graph.indices[graph.indptr[best]:graph.indptr[best + 1]]
        newly = newly[uncovered[newly]]
        reason = (f"covers {len(newly)} more images (radius {radius:.3f})" if len(newly)
                  else "everything covered: random")
        picks.append(Pick(int(sample[best]), float(gain[best]), reason))
        taken[best] = True
        if len(newly):
            uncovered[newly] = False
            gain -= np.asarray(by_member[:, newly].sum(axis=1)).ravel()
    return picks
