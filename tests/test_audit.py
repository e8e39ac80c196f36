"""The data audit and open-set training, on hand-made features with known answers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import finessl
from finessl.audit.duplicates import duplicate_groups, exact_groups, find_test_copies
from finessl.audit.neighbours import normalise, pairs_above, top_k
from finessl.audit.ood import auroc, in_distribution_share, ood_fraction, ood_scores
from finessl.audit.prior import em_prior
from finessl.audit.prototypes import PrototypeClassifier, loo_similarities
from finessl.audit.scan import pixel_digest, thumbnail
from finessl.audit.suspects import label_suspects

from helpers import make_image_folder, run_cli, write_image


def clusters(centres: np.ndarray, per: int, spread: float, rng) -> np.ndarray:
    """``per`` unit vectors around each centre."""
    points = np.repeat(centres, per, axis=0)
    return normalise(points + spread * rng.normal(size=points.shape))


@pytest.fixture(params=[4, 12], ids=["4-labels", "12-labels"])
def task(request):
    """Three task classes along axes 0-2, a foreign class along axis 3 (8-d features)."""
    rng = np.random.default_rng(0)
    axes = np.eye(8)
    labeled = clusters(axes[:3], request.param, 0.15, rng)
    labels = np.repeat(np.arange(3), request.param)
    pool_task = clusters(axes[:3], 100, 0.15, rng)
    pool_foreign = clusters(axes[3:4], 150, 0.15, rng)
    return labeled, labels, pool_task, pool_foreign


def test_chunked_neighbours_equal_the_dense_ones():
    rng = np.random.default_rng(1)
    queries, refs = normalise(rng.normal(size=(37, 5))), normalise(rng.normal(size=(23, 5)))
    sims, idx = top_k(queries, refs, k=3, chunk=4)
    dense = queries @ refs.T
    assert np.array_equal(idx, np.argsort(-dense, axis=1)[:, :3])
    assert np.allclose(sims, np.sort(dense, axis=1)[:, ::-1][:, :3], atol=1e-6)
    sims, idx = top_k(refs, refs, k=1, chunk=5, skip_self=True)  # never its own neighbour
    assert (idx[:, 0] != np.arange(len(refs))).all()


def test_a_block_of_queries_never_holds_more_than_the_budget(monkeypatch):
    """However many refs: blocks shrink so that block x refs stays under the budget (here
    50 similarities: 2 queries of 23 refs a block), with the same neighbours."""
    from finessl.audit import neighbours

    rng = np.random.default_rng(2)
    queries, refs = normalise(rng.normal(size=(37, 5))), normalise(rng.normal(size=(23, 5)))
    seen = []
    real_topk = torch.Tensor.topk

    def recorded(product, *args, **kwargs):
        seen.append(product.numel())
        return real_topk(product, *args, **kwargs)

    monkeypatch.setattr(neighbours, "PRODUCT_BUDGET", 50)
    monkeypatch.setattr(torch.Tensor, "topk", recorded)
    sims, idx = top_k(queries, refs, k=3)
    assert max(seen) == 2 * 23 and len(seen) == 19
    dense = queries @ refs.T
    assert np.array_equal(idx, np.argsort(-dense, axis=1)[:, :3])


@pytest.mark.parametrize("score", ["propagation", "knn", "prototype"])
def test_foreign_images_score_higher(task, score):
    labeled, labels, pool_task, pool_foreign = task
    pool = np.concatenate([pool_task, pool_foreign])
    foreign = np.r_[np.zeros(len(pool_task), bool), np.ones(len(pool_foreign), bool)]
    scores = ood_scores(score, pool, labeled, labels, 3)
    assert auroc(scores, foreign) > 0.99
    assert scores[foreign].min() > np.median(scores[~foreign])


def test_auroc_by_hand():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    assert auroc(np.array([1.0, 1.0]), np.array([0, 1], bool)) == 0.5  # a tie counts half


def test_in_distribution_share_of_a_known_mixture():
    rng = np.random.default_rng(2)
    labeled = rng.uniform(0, 1, 400)  # in-distribution scores
    pool = np.r_[rng.uniform(0, 1, 600), rng.uniform(2, 3, 400)]  # 60 % in distribution
    assert in_distribution_share(pool, labeled) == pytest.approx(0.6, abs=0.04)
    assert in_distribution_share(rng.uniform(0, 1, 500), labeled) == pytest.approx(1.0, abs=0.06)


def test_ood_fraction_of_the_hand_made_pool(task):
    labeled, labels, pool_task, pool_foreign = task
    if len(labeled) < 30:
        pytest.skip("the share needs a few dozen labeled images to be more than noise")
    pool = np.concatenate([pool_task, pool_foreign])  # 150 of 450 foreign: 1/3
    assert ood_fraction("knn", pool, labeled, labels, 3)[0] == pytest.approx(1 / 3, abs=0.1)
    assert ood_fraction("propagation", pool, labeled, labels, 3)[0] == pytest.approx(1 / 3, abs=0.1)
    assert ood_fraction("knn", pool_task, labeled, labels, 3)[0] < 0.1


def test_em_recovers_a_known_prior():
    """Two 1-D Gaussians (means -1, +1, sd 1); the classifier's posterior is exact under a
    balanced training prior; the pool is drawn 80 / 20."""
    rng = np.random.default_rng(3)
    y = rng.random(20000) < 0.2
    x = np.where(y, 1.0, -1.0) + rng.normal(size=len(y))
    p1 = 1 / (1 + np.exp(-2 * x))  # p(y = 1 | x) with prior 0.5 / 0.5
    probs = np.stack([1 - p1, p1], axis=1)
    prior = em_prior(probs, np.array([0.5, 0.5]))
    assert prior == pytest.approx([0.8, 0.2], abs=0.015)
    assert probs.mean(axis=0)[1] > 0.25  # the plain mean of the posteriors is biased


def test_prototype_classifier_is_out_of_sample():
    features = normalise(np.array([[1, 0.1], [1, -0.1], [0, 1], [0.1, 1]], float))
    labels = np.array([0, 0, 1, 1])
    sims = loo_similarities(features, labels, 2)
    # each image's own-class column uses only the other image of its class
    assert sims[0, 0] == pytest.approx(float(features[0] @ features[1]), abs=1e-6)
    classifier = PrototypeClassifier(features, labels, 2)
    assert (classifier.loo_probabilities().argmax(axis=1) == labels).all()
    assert classifier.train_prior.tolist() == [0.5, 0.5]


def test_a_flipped_label_is_the_first_suspect(task):
    labeled, labels, pool_task, _ = task
    wrong = labels.copy()
    wrong[5] = (labels[5] + 1) % 3  # one image labeled as the next class
    suspects = label_suspects(labeled, wrong, pool_task, 3)
    assert suspects[0].position == 5 and suspects[0].label == wrong[5]
    assert suspects[0].looks_like == labels[5]
    assert suspects[0].score > 0.5 > suspects[1].score


def test_copy_groups_join_chains_of_pairs_and_leave_other_rows_out():
    from finessl.audit.neighbours import groups

    first, second = np.array([5, 2, 0, 9, 7, 3]), np.array([9, 3, 5, 0, 8, 11])
    assert groups(first, second, 12) == [[0, 5, 9], [2, 3, 11], [7, 8]]  # largest first, then first row
    assert groups(np.zeros(0, int), np.zeros(0, int), 4) == []


def test_duplicates_and_test_copies_are_found():
    rng = np.random.default_rng(4)
    thumbs = normalise(rng.normal(size=(30, 16)))
    feats = normalise(rng.normal(size=(30, 6)))
    digests = np.asarray([bytes([i]) * 16 for i in range(30)], dtype="S16")
    thumbs[7] = normalise(thumbs[3:4] + 0.01 * rng.normal(size=(1, 16)))[0]  # a near copy of 3
    feats[7] = feats[3]
    digests[12] = digests[4]  # an exact copy of 4
    groups = duplicate_groups(thumbs, feats, digests, near_similarity=0.99)
    assert sorted(groups) == [[3, 7], [4, 12]]
    assert exact_groups(digests) == [[4, 12]]
    test_thumbs, test_feats = thumbs[[20, 21]].copy(), feats[[20, 21]].copy()
    test_digests = np.asarray([digests[20], b"t" * 16], dtype="S16")
    test_thumbs[1] = normalise(thumbs[21:22] + 0.005 * rng.normal(size=(1, 16)))[0]
    leaks = find_test_copies(thumbs, feats, digests, test_thumbs, test_feats, test_digests, 0.99)
    assert [(leak.train, leak.test, leak.kind) for leak in leaks] == [(20, 0, "exact"), (21, 1, "near")]
    first, second, similarity = pairs_above(thumbs, 0.99)
    assert (first.tolist(), second.tolist()) == ([3], [7]) and similarity[0] >= 0.99


def test_pixel_digest_and_thumbnail_survive_re_saving(tmp_path):
    y, x = np.mgrid[0:40, 0:40]  # a smooth picture: a bright disc on a gradient
    pixels = np.clip(3 * x + 120 * ((x - 25) ** 2 + (y - 15) ** 2 < 80), 0, 255).astype(np.uint8)
    image = Image.fromarray(np.stack([pixels, pixels // 2, 255 - pixels], axis=-1))
    image.save(tmp_path / "b.png", compress_level=1)  # other bytes, the same pixels
    assert pixel_digest(image) == pixel_digest(Image.open(tmp_path / "b.png").convert("RGB"))
    image.resize((50, 50)).save(tmp_path / "c.jpg", quality=80)  # resized and re-encoded
    again = thumbnail(Image.open(tmp_path / "c.jpg"))
    assert float(thumbnail(image) @ again) > 0.99


# --------------------------------------------------------------------------- the command


class MeanColour(torch.nn.Module):
    """A fixed backbone: the mean colour and its spread, so hand-made images have known features."""

    num_features = 6

    def forward(self, images):
        flat = images.flatten(2)
        return torch.cat([flat.mean(-1), flat.std(-1)], dim=1)


def png_pool(root, count: int, classes: int) -> None:
    """Unlabeled images made like the labeled ones (PNG, the same colours): a clean pool."""
    for i in range(count):
        write_image(root / "unlabeled" / f"u{i}.png", i % classes, seed=700 + i)


def foreign_pool(root, count=8):
    """Planted out-of-distribution images: random noise, unlike any class colour."""
    rng = np.random.default_rng(9)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        path = root / "unlabeled" / f"noise{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def test_audit_command_finds_a_test_copy_and_writes_the_named_keys(capsys, tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("cat", "dog", "owl"), per_class=4,
                             unlabeled=30, test=3)
    test_image = sorted((root / "test" / "dog").iterdir())[0]
    shutil.copy(test_image, root / "unlabeled" / "copied.png")  # a leak under another name
    shutil.copy(root / "unlabeled" / "u1.jpg", root / "unlabeled" / "u1-again.jpg")  # a duplicate
    out = tmp_path / "audit"
    run_cli(capsys, ["audit", "--preset", "smoke", "--data.name", "folder", "--data.root", root,
                     "--out", out], code=0)
    data = json.loads((out / "audit.json").read_text())
    for key in ("ood_fraction", "test_leaks", "label_suspects", "duplicates", "pool_prior"):
        assert key in data
    assert 0.0 <= data["ood_fraction"] <= 1.0
    copied, again = (str((root / "unlabeled" / name).resolve()) for name in ("copied.png", "u1-again.jpg"))
    assert {"path": copied, "test_path": str(test_image.resolve()), "kind": "exact",
            "similarity": 1.0} in data["test_leaks"]
    assert any(again in group for group in data["duplicates"])
    assert set(data["pool_prior"]) == {"cat", "dog", "owl"}
    assert abs(sum(data["pool_prior"].values()) - 1) < 1e-3
    assert len(data["label_suspects"]) == 12
    assert {"path", "label", "looks_like", "score"} <= set(data["label_suspects"][0])
    exclude = (out / "exclude.csv").read_text()
    # one of the two copies leaves the pool (as a duplicate, or judged foreign like its twin)
    assert "copied.png" in exclude and ("/u1-again.jpg," in exclude or "/u1.jpg," in exclude)
    assert (out / "index.html").read_text().count("<table") >= 5
    # training with --data.exclude leaves the flagged images out
    run_cli(capsys, ["train", "--preset", "smoke", "--train.steps", "2", "--train.steps_per_epoch", "2",
                     "--train.tensorboard", "false", "--data.name", "folder", "--data.root", root,
                     "--data.labels_per_class", "2", "--data.exclude", out / "exclude.csv",
                     "--output", tmp_path / "run"], code=0)
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    excluded = len(exclude.splitlines()) - 1  # every flagged image is a pool image
    assert final["num_unlabeled"] == 12 + 32 - excluded


def test_ood_filter_gives_no_weight_to_planted_foreign_images(tmp_path):
    from finessl.builder import build_run
    from finessl.config import apply_overrides, load_preset

    root = make_image_folder(tmp_path / "data", classes=("cat", "dog"), per_class=4, unlabeled=0)
    png_pool(root, 40, 2)
    planted = foreign_pool(root, count=20)
    config = apply_overrides(load_preset("smoke"), {
        "data.name": "folder", "data.root": str(root), "data.labels_per_class": "4",
        "algorithm.ood": "filter", "model.peft": "full", "train.tensorboard": "false"})
    pieces = build_run(config, backbone=MeanColour())
    paths = np.asarray(pieces.data.source.train.paths)
    kept = {str(p) for p in paths[pieces.data.unlabeled_indices]}
    dropped = {str(p) for p in paths[pieces.pool_filter.excluded]}
    assert not kept & {str(p) for p in planted}  # no planted image can get any weight
    assert len(dropped & {str(p) for p in planted}) == 20
    assert len(dropped) <= 30  # and at most a quarter of the 40 task images with them
    assert pieces.algorithm.num_unlabeled == len(pieces.data.unlabeled)
    out = tmp_path / "run"
    final = finessl.train(config, out, backbone=MeanColour(), callbacks=[])
    assert final["ood_dropped"] == len(dropped)
    listed = (out / "ood_excluded.csv").read_text()
    assert all(p.name in listed for p in planted)
    finessl.train(apply_overrides(config, {"train.steps": "9"}), out, backbone=MeanColour(),
                  callbacks=[], resume=True)  # a resumed run reads the same drop list


def test_ood_auto_keeps_a_clean_pool(tmp_path):
    from finessl.builder import build_run
    from finessl.config import apply_overrides, load_preset

    root = make_image_folder(tmp_path / "data", classes=("cat", "dog"), per_class=4, unlabeled=0)
    png_pool(root, 40, 2)
    config = apply_overrides(load_preset("smoke"), {
        "data.name": "folder", "data.root": str(root), "algorithm.ood": "auto", "model.peft": "full"})
    pieces = build_run(config, backbone=MeanColour())
    assert len(pieces.pool_filter.excluded) == 0 and len(pieces.data.unlabeled) == 48


def test_ood_auto_filters_a_pool_that_is_mostly_foreign(tmp_path):
    from finessl.audit.pool_filter import AUTO_MIN_SHARE
    from finessl.builder import build_run
    from finessl.config import apply_overrides, load_preset

    root = make_image_folder(tmp_path / "data", classes=("cat", "dog"), per_class=4, unlabeled=0)
    png_pool(root, 16, 2)
    planted = foreign_pool(root, count=40)  # 40 of the 56 (+8 labeled) pool images
    config = apply_overrides(load_preset("smoke"), {
        "data.name": "folder", "data.root": str(root), "algorithm.ood": "auto", "model.peft": "full"})
    pieces = build_run(config, backbone=MeanColour())
    assert pieces.pool_filter.share >= AUTO_MIN_SHARE
    paths = np.asarray(pieces.data.source.train.paths)
    kept = {str(p) for p in paths[pieces.data.unlabeled_indices]}
    assert len(kept & {str(p) for p in planted}) <= 4  # nearly all foreign images are out


def test_large_graphs_use_a_pca_space_that_keeps_the_neighbours():
    from finessl.audit.neighbours import search_space

    rng = np.random.default_rng(5)
    basis = normalise(rng.normal(size=(4, 64)))
    points = normalise(rng.normal(size=(600, 4)) @ basis + 0.01 * rng.normal(size=(600, 64)))
    assert np.array_equal(search_space(points, dims=8, above=1000), points)  # small: unchanged
    reduced = search_space(points, dims=8, above=300)
    assert reduced.shape == (600, 8) and np.allclose(np.linalg.norm(reduced, axis=1), 1, atol=1e-5)
    _, full = top_k(points, points, 5, skip_self=True)
    _, small = top_k(reduced, reduced, 5, skip_self=True)
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(full, small)])
    assert overlap > 0.9  # the data lie in 4 directions: 8 principal ones keep the neighbours


@pytest.mark.parametrize("argv, message", [
    (["audit", "--preset", "smoke"], "give --out"),
    (["audit", "--preset", "smoke", "--out", "OUT", "--score", "magic"], "unknown OOD score"),
    (["audit", "--run", "NONE"], "not a finessl run"),
    (["audit", "--preset", "smoke", "--out", "FILE"], "not a folder"),
])
def test_audit_command_mistakes(capsys, tmp_path, argv, message):
    (tmp_path / "afile").write_text("x")
    names = {"OUT": tmp_path / "out", "NONE": tmp_path / "none", "FILE": tmp_path / "afile"}
    assert message in run_cli(capsys, [names.get(a, a) for a in argv])
    assert not (tmp_path / "out").exists()
