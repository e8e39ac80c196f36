"""Cross-fitted estimates: the folds (every label held out once, each fold keeping every
class), the cross-fitted estimators on constructed cases whose true accuracy is known, and
``finessl estimate --cross-fit`` on a real run."""

import csv
import json

import numpy as np
import pytest
from test_engine import smoke
from test_estimate import accuracy, calibrated

from finessl.cross_fit import assign_folds
from finessl.errors import ConfigError
from finessl.eval.estimate import CROSS_FITTED, DEFAULT_CROSS_FITTED, HeldOut, Outputs, estimate
from finessl.run import train
from finessl.rundir import RunDir

from helpers import run_cli


def test_folds_hold_out_every_label_once_and_keep_every_class():
    labels = np.repeat(np.arange(5), [4, 2, 3, 7, 4])
    for folds in (2, 3):
        fold = assign_folds(labels, folds, seed=1)
        assert set(fold) == set(range(folds))
        for k in np.unique(labels):
            per_fold = np.bincount(fold[labels == k], minlength=folds)
            assert per_fold.max() - per_fold.min() <= 1  # dealt round-robin
            assert ((labels == k).sum() - per_fold >= 1).all()  # each fold trains on the class
    assert not np.array_equal(assign_folds(labels, 2, 0), assign_folds(labels, 2, 5))
    with pytest.raises(ConfigError, match="class 2 has 1"):
        assign_folds(np.array([0, 0, 1, 1, 2]), 2, 0)


def sharpened(probs: np.ndarray, power: float = 4.0) -> np.ndarray:
    """The same predictions, more confident: what memorising a few labels does."""
    sharp = probs ** power
    return sharp / sharp.sum(1, keepdims=True)


def test_held_out_labels_correct_an_overconfident_model():
    """A model overconfident by construction (calibrated probabilities sharpened, the labels
    drawn from the calibrated ones): plain confidence overrates it; the threshold and the
    temperature fitted on held-out images of the same kind recover the true accuracy."""
    pool, pool_labels = calibrated(20000, 0)
    held, held_labels = calibrated(20000, 1)
    truth = accuracy(pool, pool_labels)
    pool, held = sharpened(pool), sharpened(held)
    out = Outputs(pool, held_out=HeldOut(held, held_labels, pool.max(1), pool.argmax(1)[None]))
    assert CROSS_FITTED.get("cross-fit-atc")(out) == pytest.approx(truth, abs=0.015)
    assert CROSS_FITTED.get("cross-fit-temperature")(out) == pytest.approx(truth, abs=0.02)
    assert CROSS_FITTED.get("held-out")(out) == pytest.approx(accuracy(held, held_labels))
    assert estimate(out, "confidence").top1 > 100 * truth + 5


def test_cross_fit_doc_and_agreements_by_hand():
    """Held-out accuracy 1/2 (two of four right), the run's pool confidence 0.8 on average,
    the folds' 0.7: 0.5 + (0.8 - 0.7) = 0.6. The folds predict (0, 1) and (1, 1) on the two
    pool images, the run (0, 1): the folds agree on one of two, 0.5 + 0.1 = 0.6; the run
    agrees with the first fold on both and with the second on one, 3/4."""
    held = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    labels = np.array([0, 1, 1, 0])
    pool = np.array([[0.7, 0.3], [0.1, 0.9]])  # confidences 0.7, 0.9
    out = Outputs(pool, held_out=HeldOut(held, labels, np.array([0.6, 0.8]), np.array([[0, 1], [1, 1]])))
    assert CROSS_FITTED.get("cross-fit-doc")(out) == pytest.approx(0.6)
    assert CROSS_FITTED.get("held-out")(out) == pytest.approx(0.5)
    assert CROSS_FITTED.get("fold-agreement")(out) == pytest.approx(0.6)
    assert CROSS_FITTED.get("run-fold-agreement")(out) == pytest.approx(0.75)


def test_cross_fit_mixture_by_hand():
    """The folds are 0.9 sure of the two held-out labels they get right and 0.6 of the two
    they get wrong; the run's pool confidence 0.8 = 0.9 a + 0.6 (1 - a) gives a = 2/3. No
    wrong (or no right) held-out answer: no mixture to solve."""
    held = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    pool = np.array([[0.7, 0.3], [0.1, 0.9]])  # mean confidence 0.8
    folds = HeldOut(held, np.array([0, 1, 1, 0]), np.array([0.6, 0.8]), np.array([[0, 1]]))
    assert CROSS_FITTED.get("cross-fit-mixture")(Outputs(pool, held_out=folds)) == pytest.approx(2 / 3)
    folds.labels = held.argmax(1)
    assert np.isnan(CROSS_FITTED.get("cross-fit-mixture")(Outputs(pool, held_out=folds)))


def test_checked_confidence_trusts_confidence_only_where_the_folds_are_calibrated():
    """By hand: four held-out labels at confidence 0.9, three right: the gaps conf - right
    are (-0.1, -0.1, -0.1, 0.9), mean 0.15, standard error 0.5 / 2 = 0.25, so the folds pass
    and plain confidence (0.8) is the estimate; all four wrong (gaps 0.9, no spread) fails,
    and run-fold agreement (3/4) is. On constructed cases: folds calibrated by construction
    pass, the same folds sharpened fail."""
    held = np.tile([0.9, 0.1], (4, 1))
    pool = np.array([[0.7, 0.3], [0.1, 0.9]])
    folds = np.array([[0, 1], [1, 1]])
    check = CROSS_FITTED.get("checked-confidence")
    assert check(Outputs(pool, held_out=HeldOut(held, np.array([0, 0, 0, 1]), pool.max(1), folds))) \
        == pytest.approx(0.8)
    assert check(Outputs(pool, held_out=HeldOut(held, np.ones(4, dtype=int), pool.max(1), folds))) \
        == pytest.approx(0.75)
    big, big_labels = calibrated(2000, 0)
    held, held_labels = calibrated(2000, 1)
    wrong_half = np.stack([big.argmax(1), (big.argmax(1) + 1) % big.shape[1]])  # agreement 1/2
    calibrated_folds = Outputs(big, held_out=HeldOut(held, held_labels, big.max(1), wrong_half))
    assert check(calibrated_folds) == pytest.approx(big.max(1).mean())
    sharp = sharpened(held)
    overconfident = Outputs(big, held_out=HeldOut(sharp, held_labels, big.max(1), wrong_half))
    assert check(overconfident) == pytest.approx(0.5)
    assert any("confidence is" in w and "above their accuracy" in w
               for w in estimate(overconfident, "checked-confidence").warnings)
    assert not any("cross-fitting folds" in w
                   for w in estimate(calibrated_folds, "checked-confidence").warnings)


def test_the_cross_fitted_interval_spans_held_out_accuracy_to_confidence():
    """The run predicts class 0 on every pool image at confidence 0.9, one fold 0 and the
    other 1 everywhere: agreement is 1/2 on every image, so the bootstrap alone is the point
    [50, 50]. One of the four held-out labels is right (25 %): the interval is [25, 90]."""
    pool = np.tile([0.9, 0.1], (100, 1))
    held = np.tile([0.8, 0.2], (4, 1))
    folds = np.stack([np.zeros(100, dtype=int), np.ones(100, dtype=int)])
    out = Outputs(pool, held_out=HeldOut(held, np.array([0, 1, 1, 1]), np.full(100, 0.8), folds))
    found = estimate(out, "run-fold-agreement")
    assert found.top1 == pytest.approx(50.0)
    assert found.interval == pytest.approx((25.0, 90.0))


def test_the_interval_redraws_the_held_out_images():
    """Twenty held-out images leave a wide interval, two thousand a narrow one; without them
    a cross-fitted method falls back to plain confidence."""
    pool, _ = calibrated(2000, 0)
    widths = []
    for n in (20, 2000):
        held, labels = calibrated(n, 1)
        held_out = HeldOut(held, labels, pool.max(1), pool.argmax(1)[None])
        found = estimate(Outputs(pool, held_out=held_out), "held-out")
        assert found.method == "held-out"
        assert found.interval[0] <= found.top1 <= found.interval[1]
        widths.append(found.interval[1] - found.interval[0])
    assert widths[0] > 3 * widths[1]
    assert estimate(Outputs(pool), "cross-fit-atc").method == "confidence"


def excluded(path):
    with open(path, newline="") as handle:
        return {row[0] for row in csv.reader(handle)} - {"path"}


def test_estimate_command_cross_fits_a_run(capsys, tmp_path, monkeypatch):
    from finessl.cli import main
    from finessl.run import run_data

    monkeypatch.chdir(tmp_path)
    train(smoke(), tmp_path / "a", callbacks=[])
    err = run_cli(capsys, ["estimate", "--run", tmp_path / "a", "--method", "held-out"])
    assert "needs --cross-fit" in err
    assert main(["estimate", "--run", str(tmp_path / "a"), "--cross-fit"]) == 0
    assert "2-fold cross-fitted" in capsys.readouterr().out
    written = json.loads((tmp_path / "a" / "cross_fit.json").read_text())
    _, data = run_data(tmp_path / "a", "cpu")
    labeled = {f"synthetic:{i}" for i in data.labeled_indices}
    assert written["held_out_images"] == len(labeled) == 16
    assert written["estimate_method"] == DEFAULT_CROSS_FITTED
    assert {"held-out", "cross-fit-doc", "confidence"} <= set(written["estimates"])
    folds = [tmp_path / "a" / "cross-fit" / f"fold-{k}" for k in range(2)]
    held = [excluded(tmp_path / "a" / "cross-fit" / f"fold-{k}-exclude.csv") for k in range(2)]
    assert held[0] | held[1] == labeled and not held[0] & held[1]
    for fold, out in zip(folds, held):
        _, fold_data = run_data(fold, "cpu")
        assert {f"synthetic:{i}" for i in fold_data.labeled_indices} == labeled - out
        assert RunDir(fold).read_config().train.keep == "last"
    assert RunDir(tmp_path / "a").read_config().data.exclude is None  # the run's own is kept
    stamps = [(fold / "final.json").stat().st_mtime_ns for fold in folds]
    assert main(["estimate", "--run", str(tmp_path / "a"), "--cross-fit",
                 "--method", "held-out"]) == 0  # finished folds are reused, not retrained
    assert [(fold / "final.json").stat().st_mtime_ns for fold in folds] == stamps
    assert "(held-out," in capsys.readouterr().out
    train(smoke(**{"algorithm.name": "supervised"}), tmp_path / "b", callbacks=[])
    run_cli(capsys, ["report", "--run", tmp_path / "a", "--run", tmp_path / "b", "--out",
                     tmp_path / "cmp"], code=0)
    assert "cross-fitted estimate" not in (tmp_path / "cmp" / "index.html").read_text()
    assert main(["estimate", "--run", str(tmp_path / "b"), "--cross-fit", "3"]) == 0
    assert len(list((tmp_path / "b" / "cross-fit").glob("fold-*-exclude.csv"))) == 3
    run_cli(capsys, ["report", "--run", tmp_path / "a", "--run", tmp_path / "b", "--out",
                     tmp_path / "cmp"], code=0)
    page = (tmp_path / "cmp" / "index.html").read_text()
    assert "cross-fitted estimate" in page and "(held-out)" in page and f"({DEFAULT_CROSS_FITTED})" in page


def test_extra_labels_are_held_out_too(tmp_path):
    """Extra labels are added after data.exclude, so a fold gets a copy of them without its
    held-out ones: every fold trains on the run's labels less exactly its own."""
    from finessl.cross_fit import cross_fit
    from finessl.data.ssl_data import build_ssl_data
    from finessl.run import run_data

    base = smoke(**{"data.labels_per_class": "2"})
    data = build_ssl_data(base.data, 32, (0.5,) * 3, (0.5,) * 3, base.seed)
    pool = [int(i) for i in data.unlabeled_indices if i not in set(data.labeled_indices.tolist())][:4]
    extra = tmp_path / "extra.csv"
    extra.write_text("path,label\n" + "".join(
        f"synthetic:{i},{data.classes[int(data.source.train_targets[i])]}\n" for i in pool))
    train(smoke(**{"data.labels_per_class": "2", "data.extra_labels": str(extra)}), tmp_path / "r",
          callbacks=[])
    _, run = run_data(tmp_path / "r", "cpu")
    assert set(pool) <= set(run.labeled_indices.tolist())
    fitted = cross_fit(tmp_path / "r", 2, "cpu")
    assert len(fitted.held_out.labels) == len(run.labeled_indices)
    for k, fold in enumerate(fitted.fold_dirs):
        _, fold_data = run_data(fold, "cpu")
        held = excluded(fold.parent / f"fold-{k}-exclude.csv")
        assert {f"synthetic:{i}" for i in fold_data.labeled_indices} == \
            {f"synthetic:{i}" for i in run.labeled_indices} - held

