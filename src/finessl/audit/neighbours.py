"""Nearest neighbours by cosine similarity, in chunks: never an N x M matrix in memory.

Rows are L2-normalised features (float16 or float32); the products run in float32 torch
(multi-threaded BLAS), a block of query rows at a time: at most ``chunk`` rows and at most
``PRODUCT_BUDGET`` similarities, so memory stays flat however many refs there are.

Every row's own neighbours (``nearest``: the audit's graph and its copy search) are exact
up to ``EXACT_UP_TO`` rows. Above, all-against-all is quadratic — hours at a million
rows — so the search goes cluster by cluster, an inverted-file search (Jégou et al., TPAMI
2011, the "IVF" of faiss): k-means centres fitted on a sample, the rows sorted by their
nearest centre, and each cluster's rows compared with the rows of its ``PROBES`` nearest
clusters only. Near neighbours almost always share a cluster or lie in a neighbouring one;
the few a probe misses are replaced by the next-nearest found (measured recall in
docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from finessl.audit.row_file import BLOCK, RowFile


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); a zero row stays zero."""
    values = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return values / np.maximum(norms, 1e-12)


# Similarities one block of queries may hold (16 MiB of float32): 1,024 queries against up
# to 4 k refs, 4 against a million. Four times this was no faster on million-row searches
# and peaked 47-107 MiB higher (docs/performance.md, the audit's third pass).
PRODUCT_BUDGET = 1 << 22

# Above this many rows, graphs are built in a PCA space of ``REDUCED_DIMS`` (10x less work
# for 1,280-d features; the neighbours barely change).
REDUCE_ABOVE, REDUCED_DIMS = 20_000, 128


def fit_space(features: np.ndarray, dims: int = REDUCED_DIMS, above: int = REDUCE_ABOVE,
              seed: int = 0, block: int = 65536) -> Callable[[np.ndarray], np.ndarray]:
    """The map into the search space of ``features``: for at most ``above`` rows (or few
    dimensions) unit rows as they are, else the projection on the top ``dims`` principal
    directions fitted on a sample, re-normalised. Rows are converted one block at a time, so
    float16 features never exist in float32 all at once beyond the (smaller) result."""
    if len(features) <= above or features.shape[1] <= dims:
        return normalise
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(features), size=above, replace=False)
    sample = torch.from_numpy(np.asarray(features[picked], np.float32))
    mean = sample.mean(dim=0, keepdim=True)
    with torch.random.fork_rng():  # the randomized PCA: seeded, the caller's stream untouched
        torch.manual_seed(seed)
        _, _, basis = torch.pca_lowrank(sample - mean, q=dims, center=False)

    def project(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), dims), np.float32)  # filled block by block: one copy in all
        for i in range(0, len(rows), block):
            out[i:i + block] = normalise(
                ((torch.from_numpy(np.asarray(rows[i:i + block], np.float32)) - mean) @ basis).numpy())
        return out

    return project


def search_space(features: np.ndarray, dims: int = REDUCED_DIMS, above: int = REDUCE_ABOVE,
                 seed: int = 0) -> np.ndarray:
    """``features`` as they are, or for many rows of many dimensions their projection on the
    top ``dims`` principal directions (fitted on a sample), re-normalised."""
    if len(features) <= above or features.shape[1] <= dims:
        return np.asarray(features, np.float32)
    return fit_space(features, dims, above, seed)(features)


def top_k(queries: np.ndarray, refs: np.ndarray, k: int = 1, chunk: int = 1024,
          skip_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(similarities ``[Q, k]``, indices ``[Q, k]``) of each query's ``k`` most similar refs,
    most similar first. ``skip_self``: queries and refs are the same rows; a row is never its
    own neighbour (leave-one-out)."""
    k = min(k, len(refs) - (1 if skip_self else 0))
    if k < 1 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    ref = torch.from_numpy(np.ascontiguousarray(refs[0:len(refs)], dtype=np.float32))
    chunk = max(1, min(chunk, PRODUCT_BUDGET // len(refs)))
    sims, idx = [], []
    for start in range(0, len(queries), chunk):
        block = torch.from_numpy(np.ascontiguousarray(queries[start:start + chunk], dtype=np.float32))
        product = block @ ref.T
        if skip_self:
            rows = torch.arange(len(block))
            product[rows, rows + start] = -np.inf
        values, indices = product.topk(k, dim=1)
        sims.append(values.numpy())
        idx.append(indices.numpy())
    return np.concatenate(sims), np.concatenate(idx)


# Rows up to which ``nearest`` compares every row with every other; the clustered search's
# probes and its sample for the centres (rows per centre).
EXACT_UP_TO = 50_000
PROBES = 8
SAMPLE_PER_CENTRE = 64
MAX_REFS = 1 << 18  # rows one cluster is compared with, at most (beyond its own)


def nearest(rows: np.ndarray | RowFile, k: int, exact_up_to: int | None = None,
            probes: int = PROBES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(similarities ``[N, k]`` float32, indices ``[N, k]`` int32) of each unit row's ``k``
    most similar other rows, most similar first: exact up to ``exact_up_to`` rows (default
    ``EXACT_UP_TO``, read when called), else the clustered search (rows on disk stay there;
    one cluster's neighbourhood is read at a time)."""
    exact_up_to = EXACT_UP_TO if exact_up_to is None else exact_up_to
    n = len(rows)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int32)
    if n <= exact_up_to:
        points = np.asarray(rows[0:n], np.float32)
        sims, idx = top_k(points, points, k, skip_self=True)
        return sims, idx.astype(np.int32)
    return _clustered_nearest(rows, k, probes, seed)


def _clustered_nearest(rows: np.ndarray | RowFile, k: int, probes: int,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    n = len(rows)
    count = max(2, int(np.sqrt(n)))  # about sqrt(N) rows a cluster
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, SAMPLE_PER_CENTRE * count), replace=False))
    model = KMeans(count, n_init=1, max_iter=20, random_state=seed).fit(np.asarray(rows[sample], np.float32))
    centres = normalise(model.cluster_centers_)
    owner = np.empty(n, np.int32)
    step = max(1, min(BLOCK, PRODUCT_BUDGET // count))  # rows x centres within the budget
    for start in range(0, n, step):
        block = np.asarray(rows[start:start + step], np.float32)
        similarity = torch.from_numpy(block) @ torch.from_numpy(centres).T
        owner[start:start + len(block)] = similarity.argmax(dim=1).numpy()
    order = np.argsort(owner, kind="stable")  # sorted position -> row
    bounds = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=count))])
    on_disk = isinstance(rows, RowFile)
    if on_disk:  # the rows again, in cluster order: each cluster one contiguous read
        grouped: np.ndarray | RowFile = RowFile(rows.width, np.float32)
        for start in range(0, n, BLOCK):
            grouped.append(rows[order[start:start + BLOCK]])
        grouped.flush()
    else:
        grouped = np.asarray(rows[order], np.float32)
    near_centres = np.argsort(-(centres @ centres.T), axis=1, kind="stable")
    sims_out, idx_out = np.empty((n, k), np.float32), np.empty((n, k), np.int32)
    try:
        for c in range(count):
            lo, hi = int(bounds[c]), int(bounds[c + 1])
            if lo == hi:
                continue
            probed = _probed(c, near_centres[c], bounds, probes, k + 1)
            refs = np.concatenate([np.asarray(grouped[int(bounds[p]):int(bounds[p + 1])], np.float32)
                                   for p in probed])
            positions = np.concatenate([np.arange(bounds[p], bounds[p + 1]) for p in probed])
            queries = refs[:hi - lo]  # the own cluster comes first among the probed
            sims, idx = top_k(queries, refs, k, skip_self=True)
            sims_out[order[lo:hi]] = sims
            idx_out[order[lo:hi]] = order[positions[idx]]
    finally:
        if on_disk:
            grouped.close()
    return sims_out, idx_out


def _probed(own: int, by_similarity: np.ndarray, bounds: np.ndarray, probes: int,
            least: int) -> list[int]:
    """The clusters cluster ``own`` is compared with: itself first (its rows are the
    queries), then the nearest others, at least ``probes`` of them (empty ones skipped) and
    at least ``least`` rows in all, at most ``MAX_REFS`` rows beyond its own."""
    sizes = np.diff(bounds)
    chosen, rows = [own], int(sizes[own])
    for c in by_similarity:
        if len(chosen) >= probes and rows >= least:
            break
        if c == own or sizes[c] == 0:
            continue
        if rows - sizes[own] + sizes[c] > MAX_REFS and rows >= least:
            break
        chosen.append(int(c))
        rows += int(sizes[c])
    return chosen


def pairs_above(features: np.ndarray | RowFile, threshold: float, neighbours: int = 8,
                exact_up_to: int | None = None, digests: np.ndarray | None = None,
                block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first rows, second rows, similarities) of the pairs ``i < j`` of rows at least
    ``threshold`` similar, among each row's ``neighbours`` nearest (enough to find every
    near-copy group of that size), sorted by (first, second); arrays, not a Python object
    per pair. ``digests``: pairs of equal digests are left out (exact copies, which their
    digests join more cheaply: a pool of copies would otherwise give millions of pairs)."""
    sims, idx = nearest(features, neighbours, exact_up_to=exact_up_to, probes=2)
    n = len(features)
    keys, values = [], []
    for lo in range(0, n, block):  # each block's pairs found and de-duplicated on their own
        close = sims[lo:lo + block] >= threshold
        first = np.repeat(np.arange(lo, lo + len(close), dtype=np.int64), close.sum(axis=1))
        other, similarity = idx[lo:lo + block][close].astype(np.int64), sims[lo:lo + block][close]
        if digests is not None:
            differ = digests[first] != digests[other]
            first, other, similarity = first[differ], other[differ], similarity[differ]
        key, once = np.unique(np.minimum(first, other) * n + np.maximum(first, other), return_index=True)
        keys.append(key)
        values.append(similarity[once])
    key, once = np.unique(np.concatenate(keys), return_index=True)  # sorted by (low, high)
    return key // max(n, 1), key % max(n, 1), np.concatenate(values)[once]


def groups(first: np.ndarray, second: np.ndarray, size: int) -> list[list[int]]:
    """Connected groups of the pairs ``(first[p], second[p])`` (scipy's connected components
    over the pairs' graph), each sorted, largest first; rows in no pair are in no group."""
    if len(first) == 0:
        return []
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    graph = sparse.coo_matrix((np.ones(len(first), np.int8), (first, second)), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    members = np.unique(np.concatenate([first, second]))
    owner = component[members]
    order = np.argsort(owner, kind="stable")
    cuts = np.flatnonzero(np.diff(owner[order])) + 1
    found = [group.tolist() for group in np.split(members[order], cuts)]
    return sorted(found, key=lambda g: (-len(g), g[0]))
