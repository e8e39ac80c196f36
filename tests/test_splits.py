"""Labeled / unlabeled splits: exact per-class counts, seeds, long tails."""

import numpy as np
import pytest

from finessl.data.splits import long_tailed_counts, split_labeled_unlabeled
from finessl.errors import DataError

TARGETS = np.repeat(np.arange(5), 20)  # 5 classes x 20 images
np.random.default_rng(0).shuffle(TARGETS)


def test_exact_counts_and_unlabeled_includes_labeled():
    labeled, unlabeled = split_labeled_unlabeled(TARGETS, 5, 4, seed=0)
    assert np.bincount(TARGETS[labeled]).tolist() == [4] * 5
    assert len(unlabeled) == 100 and set(labeled) <= set(unlabeled)
    labeled2, unlabeled2 = split_labeled_unlabeled(TARGETS, 5, 4, seed=0,
                                                   unlabeled_includes_labeled=False)
    assert np.array_equal(labeled, labeled2)
    assert len(unlabeled2) == 80 and not set(labeled2) & set(unlabeled2)


def test_seeded_and_reproducible():
    a, _ = split_labeled_unlabeled(TARGETS, 5, 2, seed=7)
    b, _ = split_labeled_unlabeled(TARGETS, 5, 2, seed=7)
    c, _ = split_labeled_unlabeled(TARGETS, 5, 2, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_first_n_per_class_like_the_reference():
    labeled, _ = split_labeled_unlabeled(TARGETS, 5, 3, seed=123, mode="first")
    expected = np.sort(np.concatenate([np.flatnonzero(TARGETS == k)[:3] for k in range(5)]))
    assert np.array_equal(labeled, expected)


def test_long_tailed_counts():
    # n_k = 100 * 10^(-k/4): 100, 56.2, 31.6, 17.8, 10
    assert long_tailed_counts(100, 5, 10.0) == [100, 56, 31, 17, 10]
    assert long_tailed_counts(8, 3, 1.0) == [8, 8, 8]


def test_long_tailed_split_labeled_and_unlabeled_ratios():
    labeled, unlabeled = split_labeled_unlabeled(
        TARGETS, 5, 8, seed=0, labeled_imbalance=4.0, unlabeled_imbalance=2.0,
        unlabeled_includes_labeled=False)
    assert np.bincount(TARGETS[labeled]).tolist() == long_tailed_counts(8, 5, 4.0)
    # the unlabeled pool per class starts from min(20 - n_k) = 12 and decays to 12 / 2
    assert np.bincount(TARGETS[unlabeled]).tolist() == long_tailed_counts(12, 5, 2.0)


def test_unlabeled_only_images_join_the_unlabeled_set():
    targets = np.array([0, 1, 0, 1, -1, -1, -1])
    labeled, unlabeled = split_labeled_unlabeled(targets, 2, 1, seed=0)
    assert {4, 5, 6} <= set(unlabeled) and not {4, 5, 6} & set(labeled)


def test_too_few_images_is_a_clear_error():
    with pytest.raises(DataError, match="class 0 has 20 labeled images, 25 requested"):
        split_labeled_unlabeled(TARGETS, 5, 25, seed=0)
