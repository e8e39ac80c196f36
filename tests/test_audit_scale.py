"""The audit at pool scale: rows on disk, the clustered neighbour search, one propagation
graph for every scoring, and checks that read the pool a block at a time — each against
the in-memory, exact or per-call version it replaces."""

from __future__ import annotations

import numpy as np
import pytest
from test_audit import clusters

from finessl.audit.audit import AuditSettings, ImageNames, _checks
from finessl.audit.neighbours import nearest, normalise, pairs_above, top_k
from finessl.audit.ood import OOD_SCORES, ood_scores
from finessl.audit.row_file import RowFile, UnitRows
from finessl.audit.scan import THUMB, Scan


def on_disk(rows: np.ndarray, dtype=np.float32, block: int = 64) -> RowFile:
    stored = RowFile(rows.shape[1], dtype, block=block)
    for start in range(0, len(rows), 50):  # appended in pieces, as a scan does
        stored.append(rows[start:start + 50])
    stored.flush()
    return stored


def test_a_row_file_reads_back_what_was_appended():
    rows = np.random.default_rng(0).normal(size=(301, 5)).astype(np.float16)
    with on_disk(rows, np.float16, block=64) as stored:
        assert stored.shape == (301, 5) and stored.dtype == np.float16
        assert np.array_equal(stored[10:20], rows[10:20]) and np.array_equal(stored[300], rows[300])
        pick = np.array([7, 3, 3, 299, 0, 1, 2])
        assert np.array_equal(stored[pick], rows[pick])
        mask = np.arange(301) % 3 == 0
        assert np.array_equal(stored[mask], rows[mask])
        view = stored.part(100, 250)  # a view: nothing read, the same file
        assert len(view) == 150 and np.array_equal(view[[0, 149]], rows[[100, 249]])
        assert np.array_equal(np.concatenate([b.copy() for _, b in view.blocks()]), rows[100:250])
        with pytest.raises(ValueError):
            view.append(rows[:1])
        with pytest.raises(IndexError):
            stored[np.array([301])]


def test_the_clustered_search_with_every_cluster_probed_is_the_exact_one():
    rng = np.random.default_rng(1)
    rows = normalise(rng.normal(size=(900, 6)))
    exact_sims, exact_idx = nearest(rows, 5)
    sims, idx = nearest(rows, 5, exact_up_to=100, probes=1000)  # 30 clusters, all probed
    assert np.allclose(sims, exact_sims, atol=1e-6)
    assert (idx == exact_idx).mean() > 0.999  # equal but for exact ties
    dense = rows @ rows.T
    np.fill_diagonal(dense, -np.inf)
    assert np.array_equal(exact_idx, np.argsort(-dense, axis=1, kind="stable")[:, :5])


def test_the_clustered_search_finds_almost_every_neighbour_and_reads_rows_from_disk():
    """Points around 40 centres: with 8 probes of ~sqrt(N) clusters, nearly every true
    neighbour is found, and the rows on disk give exactly the in-memory answer."""
    rng = np.random.default_rng(2)
    rows = clusters(normalise(rng.normal(size=(40, 16))), 100, 0.15, rng)
    _, exact = nearest(rows, 10)
    sims, idx = nearest(rows, 10, exact_up_to=1000)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, exact)])
    assert recall > 0.9
    assert (idx != np.arange(len(rows))[:, None]).all()  # never itself
    assert np.allclose(sims, (rows[:, None, :] * rows[idx]).sum(-1), atol=1e-5)  # true similarities
    with on_disk(rows) as stored:
        disk_sims, disk_idx = nearest(stored, 10, exact_up_to=1000)
    assert np.array_equal(disk_idx, idx) and np.allclose(disk_sims, sims, atol=1e-6)


def test_one_graph_scores_every_split_as_a_graph_of_its_own_would():
    """The propagation scorer builds its graph once over labeled + pool; seeding one half of
    the labeled images gives what a graph built for (that half, the other half, the pool) in
    that order gives."""
    rng = np.random.default_rng(3)
    axes = np.eye(8)
    labeled, labels = clusters(axes[:3], 6, 0.15, rng), np.repeat(np.arange(3), 6)
    pool = np.concatenate([clusters(axes[:3], 40, 0.15, rng), clusters(axes[3:4], 60, 0.15, rng)])
    scorer = OOD_SCORES.get("propagation")(np.concatenate([labeled, pool]), len(labeled), labels, 3)
    refs, held = np.arange(0, 18, 2), np.arange(1, 18, 2)
    shared = scorer(refs, held)
    alone = ood_scores("propagation", np.concatenate([labeled[held], pool]), labeled[refs], labels[refs], 3)
    assert np.allclose(shared, alone, rtol=1e-9, atol=1e-12)
    knn = OOD_SCORES.get("knn")(np.concatenate([labeled, pool]), len(labeled), labels, 3)(refs, held)
    sims, _ = top_k(np.concatenate([labeled[held], pool]), labeled[refs], 1)
    assert np.allclose(knn, 1.0 - sims[:, 0])


def test_the_checks_over_rows_on_disk_equal_the_checks_in_memory():
    """The same scan held in memory and in small-block row files (every check then reads many
    blocks): the same scores, share, copies, suspects and prior."""
    rng = np.random.default_rng(4)
    axes = np.eye(8)
    labeled, labels = clusters(axes[:3], 5, 0.15, rng), np.repeat(np.arange(3), 5)
    labels[0] = 1  # one wrong seed label
    pool = np.concatenate([clusters(axes[:3], 60, 0.15, rng), clusters(axes[3:4], 50, 0.15, rng)])
    features = np.concatenate([labeled, pool]).astype(np.float16)
    thumbs = normalise(rng.normal(size=(len(features), THUMB * THUMB))).astype(np.float16)
    thumbs[40], features[40] = thumbs[30], features[30]  # a near copy (identical thumbnails)
    digests = np.asarray([i.to_bytes(16, "little") for i in range(len(features))], dtype="S16")
    digests[50] = digests[20]  # an exact copy
    n, cut = len(features), len(labeled)
    sizes = np.full((n, 2), 32, np.int32)

    def scan_of(feats, thumbnails):
        return Scan(np.arange(n), feats, digests, thumbnails, sizes)

    empty = Scan(np.zeros(0, np.int64), np.zeros((0, 8), np.float16), np.zeros(0, "S16"),
                 np.zeros((0, THUMB * THUMB), np.float16), np.zeros((0, 2), np.int32))
    names = {"labeled": [f"l{i}" for i in range(cut)], "pool": [f"p{i}" for i in range(n - cut)], "test": []}
    settings = AuditSettings(near_similarity=0.99)
    memory = _checks(["a", "b", "c"], names, scan_of(features, thumbs), cut, labels, empty, [], settings, "m")
    with on_disk(features, np.float16, 16) as feats, on_disk(thumbs, np.float16, 16) as thumbnails:
        disk = _checks(["a", "b", "c"], names, scan_of(feats, thumbnails), cut, labels, empty, [],
                       settings, "m")
    assert np.allclose(disk.ood_scores, memory.ood_scores) and disk.ood_fraction == memory.ood_fraction
    assert disk.duplicate_groups == memory.duplicate_groups == [[20, 50], [30, 40]]
    assert [(s.position, s.looks_like) for s in disk.suspects] == [(s.position, s.looks_like)
                                                                  for s in memory.suspects]
    assert disk.suspects[0].position == 0 and disk.suspects[0].looks_like == 0
    assert np.allclose(disk.pool_prior, memory.pool_prior)


def test_unit_rows_of_nothing_are_empty():
    with UnitRows(np.zeros((0, 4), np.float32), normalise) as rows:
        assert len(rows) == 0 and list(rows.blocks()) == []


def test_copy_pairs_are_the_same_block_by_block_and_leave_exact_copies_to_their_digests():
    rng = np.random.default_rng(5)
    thumbs = normalise(rng.normal(size=(40, 16)))
    thumbs[[7, 9, 30]] = thumbs[3]  # three copies of row 3
    thumbs[21] = normalise(thumbs[11:12] + 0.01 * rng.normal(size=(1, 16)))[0]  # a near copy
    whole = pairs_above(thumbs, 0.99)
    blocks = pairs_above(thumbs, 0.99, block=6)
    assert all(np.array_equal(a, b) for a, b in zip(whole, blocks))
    assert list(zip(whole[0].tolist(), whole[1].tolist())) == [(3, 7), (3, 9), (3, 30), (7, 9), (7, 30),
                                                               (9, 30), (11, 21)]
    digests = np.asarray([i.to_bytes(16, "little") for i in range(40)], dtype="S16")
    digests[[7, 9, 30]] = digests[3]  # the copies are exact: their digests say so
    first, second, _ = pairs_above(thumbs, 0.99, digests=digests)
    assert list(zip(first.tolist(), second.tolist())) == [(11, 21)]


def test_image_names_are_made_when_read_and_match_a_list():
    indices = np.array([7, 3, 11, 0])
    names = ImageNames(lambda i: f"img{i:03d}.png", indices)
    assert len(names) == 4 and names[1] == "img003.png" and names[-1] == "img000.png"
    assert list(names) == ["img007.png", "img003.png", "img011.png", "img000.png"]
    assert list(names[1:3]) == ["img003.png", "img011.png"]
    with pytest.raises(IndexError):
        names[4]
