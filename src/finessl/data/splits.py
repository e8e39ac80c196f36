"""Seeded labeled / unlabeled splits: N labels per class, balanced or long-tailed."""

from __future__ import annotations

import numpy as np

from finessl.errors import DataError


def long_tailed_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """``n_k = n_max * imbalance^(-k / (C - 1))``; imbalance 1 gives ``n_max`` everywhere."""
    if imbalance < 1:
        raise DataError(f"imbalance ratio must be >= 1, got {imbalance}")
    if num_classes == 1:
        return [n_max]
    return [int(n_max * imbalance ** (-k / (num_classes - 1))) for k in range(num_classes)]


def split_labeled_unlabeled(
    targets: np.ndarray,
    num_classes: int,
    labels_per_class: int | None,
    seed: int,
    mode: str = "random",
    unlabeled_includes_labeled: bool = True,
    labeled_imbalance: float = 1.0,
    unlabeled_imbalance: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (labeled, unlabeled) index arrays into ``targets``.

    ``targets[i] = -1`` marks an image without a label: it can only be unlabeled.
    ``mode="first"`` takes the first N of each class (the reference code's split);
    ``"random"`` draws them with ``seed``. With long-tailed ratios, class k gets
    ``N * ratio^(-k/(C-1))`` labels and the unlabeled pool is cut the same way.
    ``labels_per_class=0`` labels nothing: every image is unlabeled.
    """
    if mode not in ("random", "first"):
        raise DataError(f"data.split must be 'random' or 'first', got {mode!r}")
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    per_class = [np.flatnonzero(targets == k) for k in range(num_classes)]
    if mode == "random":
        per_class = [rng.permutation(idx) for idx in per_class]
    n_labels = [len(idx) for idx in per_class] if labels_per_class is None else \
        long_tailed_counts(labels_per_class, num_classes, labeled_imbalance)

    labeled, rest = [], []
    for k, idx in enumerate(per_class):
        if n_labels[k] < 1 and labels_per_class != 0:  # 0: no labels asked for (cold start)
            raise DataError(f"class {k} gets no labeled image; lower the imbalance ratio")
        if len(idx) < n_labels[k]:
            raise DataError(f"class {k} has {len(idx)} labeled images, {n_labels[k]} requested")
        labeled.append(idx[: n_labels[k]])
        rest.append(idx[n_labels[k]:])

    if unlabeled_imbalance != 1.0:
        sizes = long_tailed_counts(min(len(r) for r in rest), num_classes, unlabeled_imbalance)
        rest = [r[:n] for r, n in zip(rest, sizes)]
    pool = rest + ([labeled_k for labeled_k in labeled] if unlabeled_includes_labeled else [])
    pool.append(np.flatnonzero(targets < 0))
    labeled_idx = np.sort(np.concatenate(labeled)) if labeled else np.zeros(0, np.int64)
    unlabeled_idx = np.sort(np.concatenate(pool)).astype(np.int64)
    return labeled_idx.astype(np.int64), unlabeled_idx
