"""Duplicates inside the training images, and training images that copy test images.

Exact copies share the digest of their decoded pixels (a re-saved file is still exact);
near copies (resized, re-encoded) have 16 x 16 grey thumbnails at least ``near_similarity``
alike in cosine and features at least ``FEATURE_FLOOR`` alike (two different pictures
with similar thumbnails, such as two plain frames, are not copies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from finessl.audit.neighbours import groups, pairs_above, top_k


@dataclass
class Leak:
    train: int  # position in the training arrays
    test: int  # position in the test arrays
    kind: str  # "exact" or "near"
    similarity: float


def exact_groups(digests: np.ndarray) -> list[list[int]]:
    """Positions sharing a digest, groups of two or more, largest first."""
    order = np.argsort(digests, kind="stable")
    found, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or digests[order[end]] != digests[order[start]]:
            if end - start > 1:
                found.append(sorted(order[start:end].tolist()))
            start = end
    return sorted(found, key=lambda g: (-len(g), g[0]))


FEATURE_FLOOR = 0.5


def duplicate_groups(thumbnails: np.ndarray, features: np.ndarray, digests: np.ndarray,
                     near_similarity: float, neighbours: int = 8) -> list[list[int]]:
    """Groups of exact or near copies among the rows (each row in at most one group)."""
    pairs = [(a, b, s) for a, b, s in pairs_above(thumbnails, near_similarity, neighbours=neighbours)
             if _similarity(features, a, features, b) >= FEATURE_FLOOR]
    for group in exact_groups(digests):
        pairs += [(group[0], other, 1.0) for other in group[1:]]
    return groups(pairs, len(features))


def _similarity(a: np.ndarray, i: int, b: np.ndarray, j: int) -> float:
    return float(np.dot(a[i].astype(np.float32), b[j].astype(np.float32)))


def find_test_copies(train_thumbs: np.ndarray, train_features: np.ndarray, train_digests: np.ndarray,
               test_thumbs: np.ndarray, test_features: np.ndarray, test_digests: np.ndarray,
               near_similarity: float) -> list[Leak]:
    """Each training image that copies a test image (exactly, or nearly), with its closest."""
    leaks = []
    where = {bytes(d): i for i, d in enumerate(test_digests)}
    sims, idx = top_k(train_thumbs, test_thumbs, 1)
    for i, digest in enumerate(train_digests):
        if bytes(digest) in where:
            leaks.append(Leak(i, where[bytes(digest)], "exact", 1.0))
        elif (sims.shape[1] and sims[i, 0] >= near_similarity and
              _similarity(train_features, i, test_features, int(idx[i, 0])) >= FEATURE_FLOOR):
            leaks.append(Leak(i, int(idx[i, 0]), "near", float(sims[i, 0])))
    return leaks
