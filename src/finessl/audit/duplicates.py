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
from finessl.audit.row_file import RowFile


@dataclass
class Leak:
    train: int  # position in the training arrays
    test: int  # position in the test arrays
    kind: str  # "exact" or "near"
    similarity: float


def exact_groups(digests: np.ndarray) -> list[list[int]]:
    """Positions sharing a digest, groups of two or more, largest first."""
    first, second = exact_pairs(digests)
    return groups(first, second, len(digests))


def exact_pairs(digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, other) position pairs joining every digest's copies to its first position."""
    order = np.argsort(digests, kind="stable")
    ordered = digests[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # where a digest begins
    run = np.repeat(starts, np.diff(np.r_[starts, len(order)]))  # each row's run start
    copies = np.flatnonzero(np.arange(len(order)) != run)
    return order[run[copies]].astype(np.int64), order[copies].astype(np.int64)


FEATURE_FLOOR = 0.5
PAIR_BLOCK = 65536


def duplicate_groups(thumbnails: np.ndarray | RowFile, features: np.ndarray | RowFile,
                     digests: np.ndarray, near_similarity: float, neighbours: int = 8) -> list[list[int]]:
    """Groups of exact or near copies among the rows (each row in at most one group)."""
    first, second, _ = pairs_above(thumbnails, near_similarity, neighbours=neighbours, digests=digests)
    alike = np.zeros(len(first), bool)
    for start in range(0, len(first), PAIR_BLOCK):  # the features of a block of pairs at a time
        a, b = first[start:start + PAIR_BLOCK], second[start:start + PAIR_BLOCK]
        alike[start:start + len(a)] = (np.asarray(features[a], np.float32) *
                                       np.asarray(features[b], np.float32)).sum(axis=1) >= FEATURE_FLOOR
    same_first, same_other = exact_pairs(digests)
    return groups(np.concatenate([first[alike], same_first]), np.concatenate([second[alike], same_other]),
                  len(digests))


def _similarity(a: np.ndarray | RowFile, i: int, b: np.ndarray | RowFile, j: int) -> float:
    return float(np.dot(np.asarray(a[i], np.float32), np.asarray(b[j], np.float32)))


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
