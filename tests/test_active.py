"""Which images to label next: each strategy on hand-made pools, the label-next cycle
(suggest -> extra labels -> warm start) and the simulated loop."""

import copy
import csv
import json

import numpy as np
import pytest
import torch

import finessl
from finessl.active.strategies import STRATEGIES, Pool, allocate, class_difficulty, top2_margin
from finessl.cli import main
from finessl.config import apply_overrides, load_preset
from finessl.errors import ConfigError
from finessl.rundir import RunDir

from helpers import write_image


def pick(strategy, pool, budget, seed=0):
    return [p.index for p in STRATEGIES.get(strategy)(pool, budget, np.random.default_rng(seed))]


def probs(*rows):
    return np.asarray(rows, dtype=float)


def test_entropy_and_margin_pick_the_unsure_images():
    pool = Pool(probs([0.98, 0.01, 0.01], [0.34, 0.33, 0.33], [0.5, 0.49, 0.01], [0.9, 0.05, 0.05]),
                np.eye(4))
    assert pick("entropy", pool, 1) == [1]  # the flattest distribution
    assert pick("margin", pool, 1) == [2]  # 0.50 vs 0.49: the smallest top-2 gap
    assert top2_margin(pool.probs).tolist() == pytest.approx([0.97, 0.01, 0.01, 0.85])
    assert pick("entropy", pool, 4)[-1] == 0


def test_kcenter_picks_the_far_point_then_covers():
    features = np.array([[1, 0], [0.99, 0.14], [0, 1], [-1, 0], [0.98, -0.2]], dtype=float)
    pool = Pool(probs(*[[0.5, 0.5]] * 5), features, labeled_features=np.array([[1.0, 0.0]]))
    first, second = pick("kcenter", pool, 2)
    assert first == 3  # opposite the labeled image
    assert second == 2  # then the one farthest from both


def test_random_is_deterministic_for_a_seed():
    pool = Pool(probs(*[[0.5, 0.5]] * 50), np.random.default_rng(0).normal(size=(50, 4)))
    assert pick("random", pool, 5, seed=3) == pick("random", pool, 5, seed=3)
    assert pick("random", pool, 5, seed=3) != pick("random", pool, 5, seed=4)
    assert len(set(pick("random", pool, 50))) == 50


def test_balanced_spends_more_on_the_class_with_fewer_pseudo_labels():
    """Class 0: 18 confident predictions; class 1: 2 unsure ones -> class 1 is harder."""
    rng = np.random.default_rng(0)
    rows = [[0.95, 0.05]] * 18 + [[0.45, 0.55]] * 2 + [[0.6, 0.4]] * 10
    pool = Pool(probs(*rows), rng.normal(size=(30, 8)), confident=0.7)
    difficulty = class_difficulty(pool)
    assert difficulty[1] > difficulty[0]
    chosen = pick("balanced", pool, 4)
    predicted = pool.probs.argmax(axis=1)[chosen]
    assert (predicted == 1).sum() == 2  # both class-1 images (all there are)...
    assert (predicted == 0).sum() == 2  # ...and the leftover budget goes to class 0
    by_class = np.bincount(predicted, minlength=2) / np.bincount(pool.probs.argmax(axis=1), minlength=2)
    assert by_class[1] > by_class[0]  # a larger share of the hard class


def test_balanced_uses_fineSSL_margins_and_skips_near_duplicates():
    rows = [[0.6, 0.4]] * 6 + [[0.4, 0.6]] * 6
    features = np.vstack([np.tile([1.0, 0, 0], (3, 1)), np.eye(3), np.eye(3), np.eye(3)[::-1]])
    margins = np.array([0.0, 8.0])  # FineSSL finds class 1 hard
    pool = Pool(probs(*rows), features, margins=margins)
    assert class_difficulty(pool)[1] > class_difficulty(pool)[0]
    chosen = pick("balanced", pool, 3)
    sims = [features[a] @ features[b] for i, a in enumerate(chosen) for b in chosen[i + 1:]]
    assert max(sims) < 0.98  # no two picks are the same image in feature space


def test_allocation_is_proportional_and_respects_capacity():
    assert allocate(np.array([1.0, 1.0, 2.0]), 8, np.array([10, 10, 10])).tolist() == [2, 2, 4]
    assert allocate(np.array([1.0, 9.0]), 10, np.array([10, 3])).tolist() == [7, 3]
    assert allocate(np.array([1.0, 1.0]), 50, np.array([2, 3])).tolist() == [2, 3]


# --------------------------------------------------------------------------- the cycle


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    from helpers import trained_folder_run

    root, run, _ = trained_folder_run(tmp_path_factory.mktemp("al"), unlabeled=10)
    return root, run


def test_suggest_command_over_a_folder_and_the_own_pool(folder_run, tmp_path, capsys):
    root, run = folder_run
    pool = tmp_path / "pool"
    for i in range(6):
        write_image(pool / f"p{i}.png", i % 2, seed=40 + i)
    (pool / "broken.png").write_bytes(b"nope")
    out = tmp_path / "next.csv"
    assert main(["suggest", "--run", str(run), str(pool), "--budget", "3", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and {r["predicted"] for r in rows} <= {"cat", "dog"}
    assert all(r["strategy"] == "auto" and r["path"].startswith(str(pool)) for r in rows)
    assert "1 file(s) could not be read" in capsys.readouterr().err
    # without a pool: the run's own unlabeled images, never one already labeled
    own = tmp_path / "own.csv"
    assert main(["suggest", "--run", str(run), "--budget", "4", "--strategy", "kcenter",
                 "--out", str(own)]) == 0
    paths = [r["path"] for r in csv.DictReader(own.open())]
    assert len(paths) == 4 and all("/unlabeled/" in p or "/labeled/" in p for p in paths)
    capsys.readouterr()
    assert main(["suggest", "--run", str(run), "--preset", "smoke", "--budget", "2"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["suggest", "--run", str(run), "--budget", "2", "--data.max_test", "5"]) == 2
    assert "overrides need --preset/--config" in capsys.readouterr().err


def test_extra_labels_and_warm_start(folder_run, tmp_path):
    root, run = folder_run
    new = write_image(tmp_path / "new_cat.png", 0, seed=77)
    unlabeled = sorted((root / "unlabeled").glob("*.jpg"))[:2]
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + f"{new},cat\n" + "".join(f"{p},dog\n" for p in unlabeled))
    base = {"data.name": "folder", "data.root": str(root), "data.labels_per_class": "2",
            "train.steps": "2", "train.steps_per_epoch": "2", "train.tensorboard": "false"}
    config = apply_overrides(load_preset("smoke"), {**base, "data.extra_labels": str(labels),
                                                    "model.init_from": str(run)})
    from finessl.builder import build_run

    pieces = build_run(config)
    assert len(pieces.data.labeled) == 4 + 3  # 2 per class + three extra
    labels_seen = sorted(int(pieces.data.labeled[i][1]) for i in range(len(pieces.data.labeled)))
    assert labels_seen == [0, 0, 0, 1, 1, 1, 1]
    pool = {str(p) for p in np.asarray(pieces.data.source.train.paths)[pieces.data.unlabeled_indices]}
    assert not pool & {str(p) for p in unlabeled}  # newly labeled images left the pool
    trained = RunDir(run).load_adapter()[0]
    for key, value in pieces.model.trainable_state_dict().items():
        assert torch.equal(value, trained[key]), key  # started from the earlier run
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{new},cow\n")
    with pytest.raises(finessl.FinesslError, match="not a class"):
        build_run(apply_overrides(load_preset("smoke"), {**base, "data.extra_labels": str(bad)}))
    other = apply_overrides(load_preset("smoke"), {**base, "model.init_from": str(run),
                                                   "model.peft": "bitfit"})
    with pytest.raises(ConfigError, match="does not fit"):
        build_run(other)


def test_loop_reveals_true_labels_round_by_round(tmp_path, capsys):
    out = tmp_path / "loop"
    assert main(["loop", "--preset", "smoke", "--output", str(out), "--rounds", "2", "--budget", "6",
                 "--strategy", "margin", "--train.steps", "2", "--train.steps_per_epoch", "2",
                 "--train.tensorboard", "false"]) == 0
    table = capsys.readouterr().out
    assert "extra labels" in table
    first = list(csv.reader((out / "labels1.csv").open()))[1:]
    second = list(csv.reader((out / "labels2.csv").open()))[1:]
    assert len(first) == 6 and len(second) == 12 and second[:6] == first
    from finessl.data.datasets import load_source

    source = load_source(load_preset("smoke").data, 0)
    for name, label in second:  # the revealed labels are the true ones
        assert source.classes[int(source.train_targets[int(name.split(":")[1])])] == label
    assert len({name for name, _ in second}) == 12  # nothing suggested twice
    rounds = json.loads((out / "loop.json").read_text())  # each round's own training time
    assert [r["seconds"] for r in rounds] == [RunDir(out / f"round{i}").read_final()["seconds"]
                                              for i in range(3)]
    config = RunDir(out / "round2").read_config()
    assert config.model.init_from.endswith("round1") and config.data.extra_labels.endswith("labels2.csv")


def test_a_capped_pool_only_loses_the_newly_labeled_images(tmp_path):
    from finessl.builder import build_run

    base = {"data.max_unlabeled": "40", "train.tensorboard": "false"}
    before = build_run(apply_overrides(load_preset("smoke"), base)).data
    chosen = before.unlabeled_indices[[0, 5, 9, 17, 30]]
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"synthetic:{i},{before.classes[int(before.source.train_targets[i])]}\n"
                              for i in chosen))
    after = build_run(apply_overrides(load_preset("smoke"), {**base, "data.extra_labels": str(labels)})).data
    assert after.unlabeled_indices.tolist() == np.setdiff1d(before.unlabeled_indices, chosen).tolist()
    assert set(chosen) <= set(after.labeled_indices.tolist())


# --- budget-aware selection: typicality, coverage, the default, the cold start -------------

def blobs(sizes, spreads, dims=16, seed=0):
    """Clusters of ``sizes[i]`` unit vectors around random centres (spread ``spreads[i]``),
    each cluster's first row exactly its centre; returns (features, cluster of each row)."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dims, dims)))[0][: len(sizes)]  # orthonormal
    rows, owner = [], []
    for k, (size, spread) in enumerate(zip(sizes, spreads)):
        points = centres[k] + spread * rng.normal(size=(size, dims))
        points[0] = centres[k]
        rows.append(points)
        owner += [k] * size
    features = np.concatenate(rows)
    return features / np.linalg.norm(features, axis=1, keepdims=True), np.asarray(owner)


def test_typiclust_picks_the_dense_cluster_centres():
    """Three clusters of 60 (each centre planted as its first row) and a loose cloud of 10:
    three labels go to the three large clusters, each to a point at the centre's heart."""
    features, owner = blobs([60, 60, 60, 10], [0.08, 0.08, 0.08, 0.6])
    pool = Pool(None, features.astype(np.float16), classes=3)
    chosen = pick("typiclust", pool, 3)
    assert sorted(owner[chosen].tolist()) == [0, 1, 2]  # not the sparse cloud, one per cluster
    for i in chosen:
        members = np.flatnonzero(owner == owner[i])
        centre = features[members[0]]
        similarity = features[members] @ centre
        assert features[i] @ centre >= np.quantile(similarity, 0.9)  # among the most central
    # a cluster that already holds a label is covered: the next pick goes elsewhere
    labeled = Pool(None, features, labeled_features=features[[0, 60]], classes=3)
    assert owner[pick("typiclust", labeled, 1)].tolist() == [2]


def test_probcover_covers_every_cluster_before_repeating_one():
    features, owner = blobs([30, 45, 60, 25, 40], [0.05] * 5, seed=1)
    pool = Pool(None, features, classes=5)
    chosen = pick("probcover", pool, 8, seed=3)
    assert sorted(owner[chosen[:5]].tolist()) == [0, 1, 2, 3, 4]
    # with two clusters labeled, the first three picks cover the other three
    labeled = Pool(None, features, labeled_features=features[owner < 2][::10], classes=5)
    assert sorted(owner[pick("probcover", labeled, 3)].tolist()) == [2, 3, 4]


def test_chunked_kcenter_equals_the_dense_version():
    """Over rows read back from disk a block at a time (here 7 rows a block)."""
    from finessl.active.strategies import kcenter
    from finessl.audit.row_file import UnitRows

    rng = np.random.default_rng(4)
    points = rng.normal(size=(57, 6)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    labeled = rng.normal(size=(9, 6)).astype(np.float32)
    # the dense version, from the definition: the full pool x labeled distance matrix
    nearest = (1.0 - points @ (labeled / np.linalg.norm(labeled, axis=1, keepdims=True)).T).min(axis=1)
    dense = []
    for _ in range(12):
        i = int(np.argmax(nearest))
        dense.append(i)
        nearest = np.minimum(nearest, 1.0 - points @ points[i])
        nearest[i] = -np.inf
    with UnitRows(points, lambda rows: rows, block=7) as rows:
        assert len(list(rows.blocks())) == 9 and np.array_equal(rows.row(30), points[30])
        # equal up to rounding: BLAS may sum a 7-row block in another order than 57 rows
        assert np.allclose(rows.dot(points[3]), points @ points[3], rtol=0, atol=1e-6)
        chunked = [p.index for p in kcenter(rows, labeled, 12, np.random.default_rng(0), chunk=5)]
    assert chunked == dense


def test_rows_taken_from_disk_equal_fancy_indexing():
    from finessl.audit.row_file import UnitRows

    points = np.random.default_rng(8).normal(size=(41, 5)).astype(np.float32)
    with UnitRows(points, lambda rows: rows, block=6) as rows:
        for index in ([3, 4, 5, 6, 7], [40, 0, 17, 17, 2], np.arange(41), []):
            assert np.array_equal(rows[np.asarray(index, dtype=int)], points[np.asarray(index, dtype=int)])
        with pytest.raises(IndexError):
            rows[np.asarray([41])]


def test_typiclust_above_its_kmeans_sample_fits_a_sample_and_reads_rows_from_disk(monkeypatch):
    """With the sample cut to 400 rows of a 1,500-row pool: k-means is the one fitted on
    exactly the seeded sample, every row gets its nearest centre, the picks made over rows
    read back from disk equal those over the same rows in memory, and they still cover the
    five clusters."""
    from finessl.active import coverage
    from finessl.audit.row_file import UnitRows

    monkeypatch.setattr(coverage, "KMEANS_SAMPLE", 400)
    features, owner = blobs([300] * 5, [0.2] * 5, dims=12, seed=3)
    points = features.astype(np.float32)
    with UnitRows(points, lambda rows: rows, block=128) as on_disk:
        clusters, model = coverage.pool_clusters(on_disk, 5, seed=7)
        sample = np.sort(np.random.default_rng(7).choice(1500, 400, replace=False))
        _, alone = coverage.kmeans(points[sample], 5, 7)
        assert np.allclose(model.cluster_centers_, alone.cluster_centers_)
        nearest = ((points[:, None, :] - model.cluster_centers_[None]) ** 2).sum(-1).argmin(1)
        assert np.array_equal(clusters, nearest)
        none = np.zeros((0, 12), np.float32)
        from_disk = coverage._typical_picks(on_disk, clusters, model, none, 5, np.random.default_rng(1))
        in_memory = coverage._typical_picks(points, clusters, model, none, 5, np.random.default_rng(1))
    assert from_disk == in_memory
    assert sorted(owner[[p.index for p in from_disk]].tolist()) == [0, 1, 2, 3, 4]
    chosen = pick("typiclust", Pool(None, features.astype(np.float16), classes=5), 5)
    assert sorted(owner[chosen].tolist()) == [0, 1, 2, 3, 4]


def test_the_search_space_on_disk_holds_the_in_memory_values():
    """Wide features above 20,000 rows are projected on 128 principal directions: the rows
    written block by block, and a sample projected alone (ProbCover's), equal the rows of
    the whole projection."""
    from finessl.audit.neighbours import fit_space
    from finessl.audit.row_file import UnitRows

    features = np.random.default_rng(5).normal(size=(20_500, 160)).astype(np.float16)
    project = fit_space(features)
    whole = project(features)
    assert whole.shape == (20_500, 128)
    with UnitRows(features, project, block=8192) as rows:
        assert np.array_equal(np.concatenate([r.copy() for _, r in rows.blocks()]), whole)
    sample = np.sort(np.random.default_rng(6).choice(len(features), 3000, replace=False))
    assert np.array_equal(project(features[sample]), whole[sample])


def test_the_default_takes_typicality_while_labels_are_few_then_uncertainty():
    from finessl.active.strategies import TYPICAL_UP_TO, auto_choice

    features = np.random.default_rng(0).normal(size=(100, 8))
    flat = np.full((100, 4), 0.25)
    few = Pool(flat, features, labeled_features=features[:8])  # (8 + 8) / 4 = 4 per class
    assert auto_choice(few, 8)[0] == "typiclust"
    edge = Pool(flat, features, labeled_features=np.zeros((4 * TYPICAL_UP_TO - 4, 8)))
    assert auto_choice(edge, 4)[0] == "typiclust"  # exactly TYPICAL_UP_TO after the round
    assert auto_choice(edge, 5)[0] == "balanced"  # one more label than that
    assert auto_choice(Pool(None, features, classes=4), 8)[0] == "typiclust"  # no model yet
    reasons = {p.reason for p in STRATEGIES.get("auto")(few, 8, np.random.default_rng(0))}
    assert all(r.startswith("auto -> typiclust (4.0 labels per class)") for r in reasons)


def test_feature_strategies_work_above_the_projection_threshold():
    """25,000 float16 rows (PCA projection, mini-batch k-means, ProbCover's sample): each
    strategy still returns distinct picks covering the clusters without a label (the three
    labeled images lie in cluster 0)."""
    features, owner = blobs([5000] * 5, [0.3] * 5, dims=160, seed=2)
    pool = Pool(None, features.astype(np.float16), labeled_features=features[:3].astype(np.float16),
                classes=5)
    for strategy in ("typiclust", "probcover", "kcenter"):
        chosen = pick(strategy, pool, 10)
        assert len(set(chosen)) == 10 and max(chosen) < len(features)
        if strategy != "kcenter":
            assert {1, 2, 3, 4} <= set(owner[chosen].tolist()), strategy


def test_cold_start_suggest_then_train_from_zero_labels(tmp_path, capsys):
    out = tmp_path / "first.csv"
    assert main(["suggest", "--preset", "smoke", "--data.max_unlabeled", "60", "--budget", "8",
                 "--out", str(out)]) == 0
    assert "fill in the label column" in capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "label", "score", "reason", "strategy"]
    names = [r["path"] for r in rows]
    assert len(set(names)) == 8 and all(r["label"] == "" for r in rows)
    assert all("typiclust" in r["reason"] for r in rows)
    from finessl.data.datasets import load_source

    config = apply_overrides(load_preset("smoke"), {"data.max_unlabeled": "60"})
    source = load_source(config.data, 0)
    truth = [source.classes[int(source.train_targets[int(n.split(":")[1])])] for n in names]
    assert len(set(truth)) >= 3  # spread over the (4) classes, not piled into one
    # the user fills in the labels: a complete start from zero labels
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{n},{t}\n" for n, t in zip(names, truth)))
    from finessl.builder import build_run

    data = build_run(apply_overrides(copy.deepcopy(config), {"data.labels_per_class": "0",
                                                             "data.extra_labels": str(labels)})).data
    assert sorted(data.labeled_indices.tolist()) == sorted(int(n.split(":")[1]) for n in names)
    with pytest.raises(finessl.FinesslError, match="no labeled image"):
        build_run(apply_overrides(config, {"data.labels_per_class": "0"}))
    # uncertainty needs a model
    assert main(["suggest", "--preset", "smoke", "--budget", "2", "--strategy", "margin"]) == 2
    assert "needs a trained model" in capsys.readouterr().err


def test_loop_cold_start_trains_round_zero_on_the_chosen_first_labels(tmp_path, caplog):
    out = tmp_path / "loop"
    assert main(["loop", "--preset", "smoke", "--cold-start", "--output", str(out), "--rounds", "1",
                 "--budget", "3", "--train.steps", "2", "--train.steps_per_epoch", "2",
                 "--train.tensorboard", "false"]) == 0
    first = list(csv.reader((out / "labels0.csv").open()))[1:]
    second = list(csv.reader((out / "labels1.csv").open()))[1:]
    assert len(first) == 3 and len(second) == 6 and second[:3] == first
    round0 = RunDir(out / "round0").read_config()
    assert round0.data.labels_per_class == 0 and round0.data.extra_labels.endswith("labels0.csv")
    assert "have no labeled image" in caplog.text  # 3 labels over 4 classes: one is missing
    assert RunDir(out / "round1").read_config().model.init_from.endswith("round0")


def test_overrides_are_never_read_as_pool_paths():
    from finessl.cli import split_dotted

    rest, dotted = split_dotted(["suggest", "--preset", "demo", "--data.root", "data", "photos/",
                                 "--budget", "4", "--train.seed=3", "more/"])
    assert rest == ["suggest", "--preset", "demo", "photos/", "--budget", "4", "more/"]
    assert dotted == ["--data.root", "data", "--train.seed=3"]
