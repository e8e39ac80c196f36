"""Nearest neighbours by cosine similarity, in chunks: never an N x M matrix in memory.

Rows are L2-normalised features (float16 or float32); the products run in float32 torch
(multi-threaded BLAS), a block of query rows at a time: at most ``chunk`` rows and at most
``PRODUCT_BUDGET`` similarities, so memory stays flat however many refs there are.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import connected_components


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); a zero row stays zero."""
    values = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return values / np.maximum(norms, 1e-12)


# Similarities one block of queries may hold (64 MiB of float32): 1,024 queries against up
# to 16 k refs, 16 against a million.
PRODUCT_BUDGET = 1 << 24

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
    ref = torch.from_numpy(np.ascontiguousarray(refs, dtype=np.float32))
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


def pairs_above(features: np.ndarray, threshold: float, chunk: int = 1024,
                neighbours: int = 8) -> list[tuple[int, int, float]]:
    """``(i, j, similarity)`` with ``i < j`` for rows at least ``threshold`` similar, among
    each row's ``neighbours`` nearest (enough to find every near-copy group of that size)."""
    sims, idx = top_k(features, features, neighbours, chunk, skip_self=True)
    keep = sims >= threshold
    first = np.repeat(np.arange(len(features)), keep.sum(axis=1))  # row-major, as idx[keep]
    other, similarity = idx[keep], sims[keep]
    low, high = np.minimum(first, other), np.maximum(first, other)
    _, once = np.unique(low * len(features) + high, return_index=True)  # sorted by (low, high)
    return list(zip(low[once].tolist(), high[once].tolist(), similarity[once].tolist()))


def groups(pairs: list[tuple[int, int, float]], size: int) -> list[list[int]]:
    """Connected groups of the pairs (scipy's connected components over the pairs' graph),
    each sorted, largest first; rows in no pair are in no group."""
    if not pairs:
        return []
    ends = np.asarray([(a, b) for a, b, _ in pairs], dtype=np.int64)
    graph = sparse.coo_matrix((np.ones(len(ends), np.int8), (ends[:, 0], ends[:, 1])), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    members = np.unique(ends)
    owner = component[members]
    order = np.argsort(owner, kind="stable")
    cuts = np.flatnonzero(np.diff(owner[order])) + 1
    found = [group.tolist() for group in np.split(members[order], cuts)]
    return sorted(found, key=lambda g: (-len(g), g[0]))
