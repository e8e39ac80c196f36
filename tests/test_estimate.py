"""Label-free accuracy estimates: the estimators on constructed cases whose true accuracy is
known, the estimate in training (metrics, final.json, train.keep through resume), and the
``estimate`` command and report."""

import json

import numpy as np
import pytest
from test_engine import StopAt, smoke

from finessl.config import ESTIMATORS as CONFIG_CHOICES
from finessl.eval.estimate import (
    ESTIMATORS,
    Outputs,
    atc,
    atc_threshold,
    common_estimates,
    estimate,
    fit_temperature,
    warnings_for,
)
from finessl.run import train
from finessl.rundir import RunDir

from helpers import run_cli

C = 5


def calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that are calibrated by construction: a top confidence c is drawn, the
    rest spread over the other classes, and the label drawn from those probabilities (so the
    top class is right with probability c)."""
    rng = np.random.default_rng(seed)
    top = rng.uniform(0.55, 1.0, n)  # above half: the top class is the predicted one
    probs = np.empty((n, C))
    predicted = rng.integers(0, C, n)
    for i in range(n):
        rest = rng.dirichlet(np.ones(C - 1)) * (1 - top[i])
        probs[i] = np.insert(rest, predicted[i], top[i])
    # The label is drawn from the probabilities themselves: calibrated in every class.
    labels = (rng.uniform(size=(n, 1)) > probs.cumsum(1)).sum(1).clip(0, C - 1)
    return probs, labels


def accuracy(probs, labels) -> float:
    return float((probs.argmax(1) == labels).mean())


def test_calibrated_confidences_estimate_the_accuracy():
    pool, pool_labels = calibrated(20000, 0)
    calibration, calibration_labels = calibrated(20000, 1)
    truth = accuracy(pool, pool_labels)
    out = Outputs(pool, None, calibration, calibration_labels)
    for name in ("confidence", "capped-confidence", "atc", "doc", "temperature"):
        assert ESTIMATORS.get(name)(out) == pytest.approx(truth, abs=0.015), name


def test_overconfidence_is_corrected_by_the_calibration_set():
    """Sharpened probabilities overrate the accuracy; ATC, DoC and the fitted temperature,
    calibrated on data of the same kind, do not."""
    pool, pool_labels = calibrated(20000, 2)
    calibration, calibration_labels = calibrated(20000, 3)

    def sharpen(p):
        q = p ** 3
        return q / q.sum(1, keepdims=True)

    out = Outputs(sharpen(pool), None, sharpen(calibration), calibration_labels)
    truth = accuracy(pool, pool_labels)
    assert ESTIMATORS.get("confidence")(out) > truth + 0.1
    for name in ("atc", "doc", "temperature"):
        assert ESTIMATORS.get(name)(out) == pytest.approx(truth, abs=0.03), name
    assert fit_temperature(sharpen(calibration), calibration_labels) == pytest.approx(3.0, rel=0.1)


def test_agreement_is_the_share_of_images_both_heads_put_in_one_class():
    rng = np.random.default_rng(0)
    main = rng.dirichlet(np.ones(C), 1000)
    aux = main.copy()
    flipped = rng.permutation(1000)[:370]  # 370 of 1000 disagree: agreement 0.63 exactly
    top = main.argmax(1)
    aux[flipped] = np.eye(C)[(top[flipped] + 1) % C]
    found = estimate(Outputs(main, aux), "agreement")
    assert found.method == "agreement" and found.top1 == pytest.approx(63.0)
    low, high = found.interval
    assert low < 63.0 < high
    # Without an auxiliary head, agreement does not apply: the fallback is named.
    assert estimate(Outputs(main, None, main, top), "agreement").method == "atc"
    assert estimate(Outputs(main), "agreement").method == "confidence"


def test_peer_agreement_is_the_share_of_images_two_runs_put_in_one_class():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, C, 1000)
    # Two runs right on the same 700 images and wrong on the other 300 in different ways:
    # their agreement is their accuracy, 0.70, exactly.
    right = rng.permutation(1000) < 700
    first, second = labels.copy(), labels.copy()
    first[~right] = (labels[~right] + 1) % C
    second[~right] = (labels[~right] + 2) % C
    soft = lambda predicted: 0.5 * np.eye(C)[predicted] + 0.5 / C  # noqa: E731
    out = Outputs(soft(first), calibration=soft(labels[:40]), calibration_labels=labels[:40],
                  peer=soft(second))
    assert accuracy(out.pool, labels) == pytest.approx(0.70)
    found = estimate(out, "peer-agreement")
    assert found.method == "peer-agreement" and found.top1 == pytest.approx(70.0)
    low, high = found.interval
    # the bootstrap redraws the peer's rows with the run's: sqrt(.7 * .3 / 1000) = 1.45 points
    assert 70.0 - 4.5 < low < 70.0 < high < 70.0 + 4.5
    # not widened to the plain estimators' spread (confidence here: 0.6, atc: about 1.0)
    assert found.methods["confidence"] == pytest.approx(60.0) and low > 60.0
    assert "peer-agreement" not in estimate(Outputs(soft(first))).methods
    # without a peer's predictions, the estimate falls back to confidence and says so
    assert estimate(Outputs(soft(first)), "peer-agreement").method == "confidence"
    # a peer that read other images (another row count) is not compared
    from finessl.eval.estimate import peer_agreement

    assert np.isnan(peer_agreement(Outputs(soft(first), peer=soft(second)[:10])))


def test_capped_confidence_by_hand():
    """Two classes, equally frequent in the labeled set. Six pool images predicted class 0
    with confidence 0.9 and two predicted class 1 with confidence 0.6: confidence says
    (5.4 + 1.2) / 8 = 0.825; class 0's mass 5.4 / 8 = 0.675 is capped at its prior 0.5, so
    0.5 + 1.2 / 8 = 0.65 (the pool holds at most four images of class 0 if it is balanced)."""
    pool = np.array([[0.9, 0.1]] * 6 + [[0.4, 0.6]] * 2)
    out = Outputs(pool, None, np.full((4, 2), 0.5), np.array([0, 1, 0, 1]))
    assert ESTIMATORS.get("confidence")(out) == pytest.approx(0.825)
    assert ESTIMATORS.get("capped-confidence")(out) == pytest.approx(0.65)
    # A balanced prediction is not capped; without labels there is no prior.
    even = Outputs(pool[[0, 1, 6, 7]], None, np.full((4, 2), 0.5), np.array([0, 1, 0, 1]))
    assert ESTIMATORS.get("capped-confidence")(even) == pytest.approx(0.75)
    assert np.isnan(ESTIMATORS.get("capped-confidence")(Outputs(pool)))


def test_capped_confidence_at_a_pool_prior_given_by_hand():
    """The same pool as above with the pool's shares given: at 0.6 / 0.4 class 0's mass 0.675
    is capped at 0.6, so 0.6 + 0.15 = 0.75; at 0.75 / 0.25 nothing is capped (0.825, plain
    confidence). A given prior needs no labels."""
    pool = np.array([[0.9, 0.1]] * 6 + [[0.4, 0.6]] * 2)
    labels = np.array([0, 1, 0, 1])
    out = Outputs(pool, None, np.full((4, 2), 0.5), labels, prior=np.array([0.6, 0.4]))
    assert ESTIMATORS.get("capped-confidence")(out) == pytest.approx(0.75)
    out.prior = np.array([0.75, 0.25])
    assert ESTIMATORS.get("capped-confidence")(out) == pytest.approx(0.825)
    assert ESTIMATORS.get("capped-confidence")(Outputs(pool, prior=np.array([0.6, 0.4]))) == \
        pytest.approx(0.75)
    # the bootstrap keeps the prior
    assert ESTIMATORS.get("capped-confidence")(out.subset(np.arange(8))) == pytest.approx(0.825)


def test_capped_recall_reads_the_labeled_class_mix_by_hand():
    """The pool above (class 0's mass 0.675, class 1's 0.15), balanced labels. At a given
    prior 0.75 / 0.25 nothing is capped; the recalls are 0.675 / 0.75 = 0.9 and 0.15 / 0.25 =
    0.6, so at the labels' 50 / 50 mix 0.75 (capped-confidence, the pool's mix: 0.825). At
    0.6 / 0.4: 0.6 / 0.6 = 1 and 0.15 / 0.4 = 0.375, so 0.6875. With no prior given it is
    capped-confidence (0.65); a class the prior says the pool lacks is left out."""
    pool = np.array([[0.9, 0.1]] * 6 + [[0.4, 0.6]] * 2)
    labels = np.array([0, 1, 0, 1])
    recall = ESTIMATORS.get("capped-recall")
    out = Outputs(pool, None, np.full((4, 2), 0.5), labels, prior=np.array([0.75, 0.25]))
    assert recall(out) == pytest.approx(0.75)
    assert ESTIMATORS.get("capped-confidence")(out) == pytest.approx(0.825)
    out.prior = np.array([0.6, 0.4])
    assert recall(out) == pytest.approx(0.6875)
    out.prior = None
    assert recall(out) == pytest.approx(0.65) == ESTIMATORS.get("capped-confidence")(out)
    out.prior = np.array([1.0, 0.0])
    assert recall(out) == pytest.approx(0.675)
    # the labeled mix is the target: without labels there is none, even with a prior given
    assert np.isnan(recall(Outputs(pool, prior=np.array([0.75, 0.25]))))


def test_a_calibrated_model_on_a_long_tailed_pool_reads_both_accuracies_exactly():
    """900 images of class 0 (810 predicted right) and 100 of class 1 (80 right); every
    prediction's confidence is its predicted class's precision (calibrated by construction):
    810 / 830 for the 830 predicted 0, 80 / 170 for the 170 predicted 1. At the true prior
    0.9 / 0.1 capped-confidence is the pool's accuracy, 0.89, and capped-recall the mean of the
    recalls 0.9 and 0.8, 0.85: a balanced test set's top-1 for this model."""
    truth = np.array([0] * 900 + [1] * 100)
    predicted = np.array([0] * 810 + [1] * 90 + [1] * 80 + [0] * 20)
    sure = np.where(predicted == 0, 810 / 830, 80 / 170)
    pool = np.tile(((1 - sure) / 2)[:, None], (1, 3))  # a third class, in neither pool nor labels,
    pool[np.arange(1000), predicted] = sure           # keeps 80 / 170 < 1/2 the top class
    out = Outputs(pool, calibration_labels=np.array([0, 1] * 4), prior=np.array([0.9, 0.1, 0.0]))
    assert (pool.argmax(1) == truth).mean() == pytest.approx(0.89)
    assert ESTIMATORS.get("capped-confidence")(out) == pytest.approx(0.89)
    assert ESTIMATORS.get("capped-recall")(out) == pytest.approx(0.85)


def test_adjusted_estimators_move_the_confidences_to_the_given_prior_by_hand():
    """Balanced labels, a given prior 0.8 / 0.2. A prediction of class 0 at (0.9, 0.1) moves
    to 1.44 / 1.48 = 0.97297, one of class 1 at (0.4, 0.6) to 0.24 / 0.88 = 0.27273. Six of
    the first, two of the second: masses 0.72973 and 0.06818, under the caps, so
    adjusted-confidence 0.79791 and adjusted-recall (0.72973 / 0.8 + 0.06818 / 0.2) / 2 =
    0.62654 (capped-recall, at the model's own confidences: 0.79688)."""
    pool = np.array([[0.9, 0.1]] * 6 + [[0.4, 0.6]] * 2)
    out = Outputs(pool, calibration_labels=np.array([0, 1, 0, 1]), prior=np.array([0.8, 0.2]))
    assert ESTIMATORS.get("adjusted-confidence")(out) == pytest.approx(0.79791, abs=1e-5)
    assert ESTIMATORS.get("adjusted-recall")(out) == pytest.approx(0.62654, abs=1e-5)
    assert ESTIMATORS.get("capped-recall")(out) == pytest.approx(0.796875)
    out.prior = None  # without a given prior, nothing moves: capped-confidence
    for name in ("adjusted-confidence", "adjusted-recall"):
        assert ESTIMATORS.get(name)(out) == pytest.approx(0.65)


def test_a_model_calibrated_on_balanced_classes_is_read_exactly_on_a_shifted_pool():
    """Two kinds of image: A, where a balanced set's class 0 is 90 % likely, and B, 30 %
    (so A is a third of a balanced set). Moved to a pool 80 % class 0, 1,500 images hold 720
    of class 0 and 20 of class 1 looking like A, 480 and 280 looking like B; the model predicts
    0 on A and 1 on B. Its accuracy on the pool is 1000 / 1500, its recalls 720 / 1200 and
    280 / 300 (mean 0.76667). The adjusted estimators give both exactly; the unadjusted ones
    credit class 1 with all the B images (capped-recall 0.7775, capped-confidence 0.644)."""
    pool = np.array([[0.9, 0.1]] * 740 + [[0.3, 0.7]] * 760)
    truth = np.array([0] * 720 + [1] * 20 + [0] * 480 + [1] * 280)
    out = Outputs(pool, calibration_labels=np.array([0, 1] * 4), prior=np.array([0.8, 0.2]))
    assert (pool.argmax(1) == truth).mean() == pytest.approx(1000 / 1500)
    assert ESTIMATORS.get("adjusted-confidence")(out) == pytest.approx(1000 / 1500)
    assert ESTIMATORS.get("adjusted-recall")(out) == pytest.approx((0.6 + 280 / 300) / 2)
    assert ESTIMATORS.get("capped-recall")(out) == pytest.approx(0.7775)
    assert ESTIMATORS.get("capped-confidence")(out) == pytest.approx(0.644)


def test_a_pool_prior_is_read_from_csv_and_bad_ones_are_refused(tmp_path):
    from finessl.errors import DataError
    from finessl.eval.estimate import read_pool_prior

    audit = tmp_path / "pool_prior.csv"  # as finessl audit writes it, shares not summing to 1
    audit.write_text("class,pool_share,labeled_share\nb,0.3,0.5\na,0.1,0.5\n")
    assert read_pool_prior(audit, ["a", "b"]) == pytest.approx([0.25, 0.75])
    plain = tmp_path / "prior.csv"
    plain.write_text("class,share\na,2\nb,0\n")
    assert read_pool_prior(plain, ["a", "b"]) == pytest.approx([1.0, 0.0])
    for text, message in [("class,share\na,1\n", "missing: b"),
                          ("class,share\na,1\nb,1\nc,1\n", "not the run's: c"),
                          ("class,share\na,x\nb,1\n", "line 2: share 'x' is not a share"),
                          ("name,share\na,1\n", "needs a header with 'class'"),
                          ("class,share\na,0\nb,0\n", "sum to zero")]:
        plain.write_text(text)
        with pytest.raises(DataError, match=message):
            read_pool_prior(plain, ["a", "b"])
    with pytest.raises(DataError, match="cannot read the pool prior"):
        read_pool_prior(tmp_path / "absent.csv", ["a", "b"])


def test_atc_threshold_by_hand():
    scores = 0.5 + np.arange(1, 11) / 20  # confidences 0.55, 0.60, ..., 1.00
    right = np.arange(10) >= 3  # the three least confident are wrong: 70 % right
    # the threshold passes 7 of 10: quantile 0.3 = 0.65 + 0.7 * 0.05 = 0.685
    assert atc_threshold(scores, right) == pytest.approx(0.685)
    calibration = np.stack([scores, 1 - scores], 1)
    labels = np.where(right, 0, 1)
    pool = np.array([[0.35, 0.65], [0.95, 0.05], [0.5, 0.5], [0.01, 0.99], [0.7, 0.3]])
    # pool confidences 0.65, 0.95, 0.5, 0.99, 0.7: three of five above 0.685
    assert atc(Outputs(pool, None, calibration, labels)) == pytest.approx(0.6)


def test_a_collapsed_model_is_flagged():
    probs = np.tile([[0.97, 0.01, 0.01, 0.005, 0.005]], (200, 1))
    found = estimate(Outputs(probs))
    assert any("one class" in w for w in found.warnings)
    assert estimate(Outputs(calibrated(500, 4)[0])).warnings == []


def test_a_cap_at_work_is_explained_whatever_the_other_estimators_say():
    # 4 classes, a balanced labeled set; the model predicts 40 % of the pool as "coat" (20 %
    # each of the others), every prediction at confidence 0.9: confidence 0.90, capped
    # 0.25 + 3 * 0.18 = 0.79, so the cap takes 11 points off plain confidence.
    pool = np.full((100, 4), 0.1 / 3)
    predicted = [0] * 40 + [1] * 20 + [2] * 20 + [3] * 20
    pool[np.arange(100), predicted] = 0.9
    out = Outputs(pool, calibration=np.eye(4)[np.arange(40) % 4],
                  calibration_labels=np.arange(40) % 4)
    capped = ESTIMATORS.get("capped-confidence")(out)
    assert capped == pytest.approx(0.79)
    names = ["coat", "shirt", "bag", "boot"]
    cap_note = ("capped-confidence is 11 points below confidence: the model puts 40 % of the pool "
                "into 'coat' against 25 % of the labeled set; if it merges other classes into it, "
                "the cap is right; if the pool really holds that many (a long tail), the cap cuts "
                "right answers too and the accuracy on this pool is likely between 79 % and "
                "confidence's 90 % (finessl audit estimates the pool's class prior)")
    notes = warnings_for(out, {"confidence": 0.90, "atc": 0.88, "capped-confidence": capped,
                               "capped-recall": capped}, names)
    assert notes == [cap_note]  # the two capped estimators are not "disagreeing" estimators
    # the others disagreeing among themselves (20 points) is a second cause, said on its own
    notes = warnings_for(out, {"confidence": 0.90, "atc": 0.70, "capped-confidence": capped}, names)
    assert notes[0] == cap_note and notes[1].startswith("the estimators disagree by 20 points")
    # a cap that takes less than 10 points is not worth a word
    assert warnings_for(out, {"confidence": 0.88, "atc": 0.88, "capped-confidence": 0.79}, names) == []


def test_the_config_lists_every_estimator():
    assert sorted(CONFIG_CHOICES) == sorted([*ESTIMATORS.names(), "none"])


def test_common_estimates_compare_runs_on_one_estimator():
    finals = [{"estimate_method": "agreement", "estimates": {"agreement": 80.0, "atc": 78.0}},
              {"estimate_method": "atc", "estimates": {"atc": 70.0, "doc": 69.0}}]
    assert common_estimates(finals) == ("atc", [78.0, 70.0])
    assert common_estimates([finals[0], finals[0]]) == ("agreement", [80.0, 80.0])
    assert common_estimates([{}, finals[0]]) == (None, [None, None])


def test_training_estimates_at_every_evaluation_and_keeps_the_best_through_resume(tmp_path):
    keep = {"train.keep": "best-estimate", "train.eval_every": "1", "train.steps": "5",
            "train.keep_margin": "0"}
    straight = train(smoke(**keep), tmp_path / "straight", callbacks=[])
    records = [r for r in RunDir(tmp_path / "straight").read_metrics() if r["kind"] == "eval"]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    estimates = [r["estimated_top1"] for r in records]
    assert all(0 <= e <= 100 for e in estimates)
    best = int(np.argmax(estimates))  # the first of the highest
    if estimates[best] == estimates[-1]:
        best = len(estimates) - 1  # no lead over the last: margin 0 keeps it
    assert straight["kept_step"] == records[best]["step"]
    assert straight["estimated_top1"] == pytest.approx(estimates[best])
    assert straight["top1"] == pytest.approx(records[best]["top1"])  # the kept model's test top-1
    if records[best]["step"] != 5:
        assert straight["last_top1"] == pytest.approx(records[-1]["top1"])
    low, high = straight["estimated_top1_interval"]
    assert low <= straight["estimated_top1"] <= high
    json.loads((tmp_path / "straight" / "final.json").read_text())  # strict JSON

    with pytest.raises(Exception, match="--resume"):
        train(smoke(**keep), tmp_path / "stopped", callbacks=[StopAt(3)])
    resumed = train(smoke(**keep), tmp_path / "stopped", callbacks=[], resume=True)
    for key in ("kept_step", "estimated_top1", "top1", "estimated_top1_interval"):
        assert resumed[key] == straight[key], key
    a, _ = RunDir(tmp_path / "straight").load_adapter()
    b, _ = RunDir(tmp_path / "stopped").load_adapter()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_keep_margin_goes_back_only_for_a_lead_larger_than_it(tmp_path):
    """The same run with a margin no lead can pass keeps the last step; with the smallest
    lead that goes back, the earlier step (the rule worked out from metrics.jsonl)."""
    base = {"train.keep": "best-estimate", "train.eval_every": "1", "train.steps": "5"}
    stays = train(smoke(**base, **{"train.keep_margin": "100"}), tmp_path / "stays", callbacks=[])
    records = [r for r in RunDir(tmp_path / "stays").read_metrics() if r["kind"] == "eval"]
    estimates = [r["estimated_top1"] for r in records]
    assert stays["kept_step"] == 5 and stays["top1"] == pytest.approx(records[-1]["top1"])
    best = int(np.argmax(estimates))
    lead = estimates[best] - estimates[-1]
    if best == len(estimates) - 1:
        assert "the last evaluation had the highest" in stays["kept_reason"]
        return
    assert f"estimated {lead:.2f} points above the last" in stays["kept_reason"]
    if lead == 0:
        return
    goes = train(smoke(**base, **{"train.keep_margin": str(lead / 2)}), tmp_path / "goes",
                 callbacks=[])
    assert goes["kept_step"] == records[best]["step"]
    assert goes["top1"] == pytest.approx(records[best]["top1"])


def test_estimating_does_not_change_training(tmp_path):
    on = train(smoke(), tmp_path / "on", callbacks=[])
    off = train(smoke(**{"train.estimate": "none"}), tmp_path / "off", callbacks=[])
    assert "estimated_top1" in on and "estimated_top1" not in off
    a, _ = RunDir(tmp_path / "on").load_adapter()
    b, _ = RunDir(tmp_path / "off").load_adapter()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_a_known_pool_prior_caps_the_estimate_in_training_and_after(tmp_path):
    from finessl.errors import DataError
    from finessl.run import estimate as run_estimate

    bad = tmp_path / "bad.csv"
    bad.write_text("class,share\nnope,1\n")
    with pytest.raises(DataError, match="not the run's: nope"):  # before the first step
        train(smoke(**{"train.estimate_prior": str(bad)}), tmp_path / "bad", callbacks=[])
    assert not (tmp_path / "bad" / RunDir.METRICS).exists() or \
        '"kind": "train"' not in (tmp_path / "bad" / RunDir.METRICS).read_text()
    plain = train(smoke(), tmp_path / "plain", callbacks=[])
    classes = list(plain["per_class_acc"])
    prior = tmp_path / "prior.csv"  # every image of the pool said to be of the first class
    prior.write_text("class,share\n" + "".join(f"{c},{int(c == classes[0])}\n" for c in classes))
    told = train(smoke(**{"train.estimate_prior": str(prior), "train.estimate": "capped-recall"}),
                 tmp_path / "told", callbacks=[])
    # Estimating does not change training, so the run told the prior has the plain run's
    # weights: its estimate in training is the plain run's estimated afterwards with that prior.
    after = run_estimate(tmp_path / "plain", pool_prior=prior).methods
    assert told["estimates"]["capped-confidence"] == pytest.approx(after["capped-confidence"])
    assert told["estimate_method"] == "capped-recall"
    assert told["estimated_top1"] == pytest.approx(after["capped-recall"])
    # the pool said to hold one class: the recall of that class alone, its mass capped at 1
    assert after["capped-recall"] == pytest.approx(after["capped-confidence"])
    assert told["estimates"]["confidence"] == pytest.approx(plain["estimates"]["confidence"])
    # and finessl estimate on the told run's own pool reads its train.estimate_prior
    again = run_estimate(tmp_path / "told").methods["capped-confidence"]
    assert again == pytest.approx(told["estimates"]["capped-confidence"])


def test_estimate_command_and_side_by_side_report(capsys, tmp_path, monkeypatch):
    from helpers import make_image_folder

    monkeypatch.chdir(tmp_path)
    train(smoke(), tmp_path / "a", callbacks=[])
    train(smoke(**{"algorithm.name": "supervised"}), tmp_path / "b", callbacks=[])
    run_cli(capsys, ["estimate", "--run", tmp_path / "a", "--out", tmp_path / "e.json"], code=0)
    written = json.loads((tmp_path / "e.json").read_text())
    assert 0 <= written["estimated_top1"] <= 100 and written["estimate_pool"] > 0
    folder = make_image_folder(tmp_path / "new", classes=("x",), per_class=3, unlabeled=0, test=0)
    (folder / "labeled" / "x" / "broken.png").write_bytes(b"not an image")
    from finessl.cli import main

    assert main(["estimate", "--run", str(tmp_path / "a"), str(folder / "labeled"),
                 "--method", "confidence"]) == 0
    out = capsys.readouterr().out
    assert "(confidence, 3 images of" in out  # the unreadable file is left out
    err = run_cli(capsys, ["estimate", "--run", tmp_path / "a", "--method", "guess"])
    assert "unknown estimate.method 'guess'" in err
    # A pool prior given: with all of it on one class the cap keeps only that class's
    # confidence mass, so over the classes these add up to plain confidence.
    from finessl.run import estimate as run_estimate

    classes = list(RunDir(tmp_path / "a").read_final()["per_class_acc"])
    capped = []
    for name in classes:
        prior = tmp_path / f"prior-{name}.csv"
        prior.write_text("class,share\n" + "".join(f"{c},{int(c == name)}\n" for c in classes))
        capped.append(run_estimate(tmp_path / "a", pool_prior=prior).methods["capped-confidence"])
    assert sum(capped) == pytest.approx(written["estimates"]["confidence"], abs=1e-4)  # float32
    run_cli(capsys, ["estimate", "--run", tmp_path / "a", "--pool-prior", prior, "--out",
                     tmp_path / "p.json"], code=0)
    assert json.loads((tmp_path / "p.json").read_text())["pool_prior"] == str(prior)
    prior.write_text("class,share\nnot-a-class,1\n")
    err = run_cli(capsys, ["estimate", "--run", tmp_path / "a", "--pool-prior", prior])
    assert "not the run's: not-a-class" in err
    run_cli(capsys, ["report", "--run", tmp_path / "a", "--run", tmp_path / "b", "--out",
                     tmp_path / "cmp"], code=0)
    page = (tmp_path / "cmp" / "index.html").read_text()
    assert "Estimated without labels" in page
    # A peer run: its agreement with the run, on the run's pool and on given images, equals
    # the two models' predictions compared by hand (b shares a's seed, so a's pool is b's).
    from finessl.run import run_outputs

    run_cli(capsys, ["estimate", "--run", tmp_path / "a", "--peer", tmp_path / "b", "--out",
                     tmp_path / "peer.json"], code=0)
    peered = json.loads((tmp_path / "peer.json").read_text())
    mine, theirs = run_outputs(tmp_path / "a", "cpu"), run_outputs(tmp_path / "b", "cpu")
    by_hand = 100 * float((mine.pool.argmax(1) == theirs.pool.argmax(1)).mean())
    assert peered["estimate_method"] == "peer-agreement" and peered["peer"] == str(tmp_path / "b")
    assert peered["estimated_top1"] == pytest.approx(by_hand)
    assert any("same seed (0)" in w for w in peered["estimate_warnings"])
    assert any("same labeled images" in w for w in peered["estimate_warnings"])
    # Another seed draws other labels (data.split random): neither warning.
    train(smoke(seed="1"), tmp_path / "c", callbacks=[])
    other = run_estimate(tmp_path / "a", device="cpu", peer=tmp_path / "c")
    assert other.method == "peer-agreement"
    assert not any("same seed" in w or "same labeled" in w for w in other.warnings)
    mine, theirs = (run_outputs(tmp_path / r, "cpu", [folder / "labeled"]) for r in "ab")
    found = run_estimate(tmp_path / "a", [folder / "labeled"], "cpu", peer=tmp_path / "b")
    assert found.pool_size == 3 and found.top1 == pytest.approx(
        100 * float((mine.pool.argmax(1) == theirs.pool.argmax(1)).mean()))
    err = run_cli(capsys, ["estimate", "--run", tmp_path / "a", "--peer", tmp_path / "a"])
    assert "is the run itself" in err
    err = run_cli(capsys, ["estimate", "--run", tmp_path / "a", "--method", "peer-agreement"])
    assert "needs --peer" in err
    err = run_cli(capsys, ["estimate", "--run", tmp_path / "a", "--peer", tmp_path / "b", "--cross-fit"])
    assert "give one" in err
    train(smoke(**{"data.num_classes": "3"}), tmp_path / "three", callbacks=[])
    err = run_cli(capsys, ["estimate", "--run", tmp_path / "a", "--peer", tmp_path / "three"])
    assert "other classes than the run" in err


def test_a_dataset_without_a_test_set_trains_and_reports_the_estimate(capsys, tmp_path):
    from finessl.cli import main

    from helpers import make_image_folder

    root = make_image_folder(tmp_path / "data", per_class=4, unlabeled=12, test=0)
    assert not (root / "test").exists()
    out = tmp_path / "run"
    argv = ["train", "--preset", "smoke", "--data.name", "folder", "--data.root", str(root),
            "--data.labels_per_class", "none", "--train.steps", "3", "--train.steps_per_epoch", "3",
            "--train.tensorboard", "false", "--output", str(out)]
    assert main(argv) == 0
    assert "no test set  estimated_top1" in capsys.readouterr().out
    final = RunDir(out).read_final()
    assert final["top1"] is None and final["num_test"] == 0 and final["per_class_acc"] == {}
    assert 0 <= final["estimated_top1"] <= 100
    run_cli(capsys, ["report", "--run", out], code=0)
    err = run_cli(capsys, ["eval", "--run", out])
    assert "no test set" in err
    # A test folder that is named but missing is still an error, not "no test set".
    err = run_cli(capsys, [*argv[:-1], str(tmp_path / "other"), "--data.test_dir", str(tmp_path / "nope")])
    assert "test_dir" in err
    # The CSV dataset without data.test_csv, the same way.
    rows = ["path,label"] + [f"{p},{p.parent.name}" for p in sorted((root / "labeled").rglob("*.png"))]
    rows += [f"{p}," for p in sorted((root / "unlabeled").glob("*"))]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    csv_argv = ["train", "--preset", "smoke", "--data.name", "csv", "--data.csv", str(tmp_path / "train.csv"),
                "--data.labels_per_class", "none", "--train.steps", "2", "--train.tensorboard", "false",
                "--output", str(tmp_path / "csv-run")]
    assert main(csv_argv) == 0
    assert RunDir(tmp_path / "csv-run").read_final()["top1"] is None
    # A simulated loop needs a test set to compare its rounds: refused before round 0.
    labeled_only = ["path,label"] + [f"{p},{p.parent.name}"
                                     for p in sorted((root / "labeled").rglob("*.png"))]
    (tmp_path / "all.csv").write_text("\n".join(labeled_only) + "\n")
    err = run_cli(capsys, ["loop", "--preset", "smoke", "--data.name", "csv", "--data.csv",
                           tmp_path / "all.csv", "--output", tmp_path / "loop", "--budget", "2"])
    assert "compares rounds on a test set" in err
    assert not (tmp_path / "loop" / "round0").exists()
