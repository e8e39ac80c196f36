"""Which images to label next: each strategy on hand-made pools, the label-next cycle
(suggest -> extra labels -> warm start) and the simulated loop."""

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
    predicted = pool.predicted[chosen]
    assert (predicted == 1).sum() == 2  # both class-1 images (all there are)...
    assert (predicted == 0).sum() == 2  # ...and the leftover budget goes to class 0
    by_class = np.bincount(predicted, minlength=2) / np.bincount(pool.predicted, minlength=2)
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
    from helpers import make_image_folder

    root = make_image_folder(tmp_path_factory.mktemp("al") / "data", per_class=4, unlabeled=10)
    config = apply_overrides(load_preset("smoke"), {
        "data.name": "folder", "data.root": str(root), "data.labels_per_class": "2",
        "train.steps": "4", "train.steps_per_epoch": "2", "train.tensorboard": "false"})
    run = root.parent / "run"
    finessl.train(config, run, callbacks=[])
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
    assert all(r["strategy"] == "balanced" and r["path"].startswith(str(pool)) for r in rows)
    assert "1 file(s) could not be read" in capsys.readouterr().err
    # without a pool: the run's own unlabeled images, never one already labeled
    own = tmp_path / "own.csv"
    assert main(["suggest", "--run", str(run), "--budget", "4", "--strategy", "kcenter",
                 "--out", str(own)]) == 0
    paths = [r["path"] for r in csv.DictReader(own.open())]
    assert len(paths) == 4 and all("/unlabeled/" in p or "/labeled/" in p for p in paths)


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
