"""The results harness's table: mean ± sample std over seeds and the training time it reports."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import harness  # noqa: E402


def _final(top1: float, seconds: float, worst: float) -> dict:
    return {"top1": top1, "balanced_acc": top1, "ece": 0.1, "seconds": seconds,
            "per_class_acc": {"a": worst, "b": 100.0}}


def test_table_reports_mean_std_and_training_time_of_reused_runs():
    results = {("demo", "", "finessl"): [_final(70.0, 60.0, 40.0), _final(74.0, 120.0, 50.0)]}
    text = harness.table(results, [("demo", "")], ["finessl"], [0, 1], {}, "cmd", seconds=0.0)
    # mean 72, sample std sqrt(((70-72)^2 + (74-72)^2) / 1) = 2.83; worst class 45 ± 7.07
    row = next(line for line in text.splitlines() if line.startswith("| demo"))
    assert "| 72.00 ± 2.83 |" in row and "| 45.00 ± 7.07 |" in row and "| 1.5 |" in row
    assert "training time 3 min summed over the runs" in text  # 60 s + 120 s, not the 0 s wall
    assert "this invocation: 0 min" in text


def test_write_section_replaces_only_its_own_block(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("intro\n<!-- a:start -->\nold\n<!-- a:end -->\n<!-- b:start -->\nkeep\n<!-- b:end -->\n")
    harness.write_section(doc, "a", "new\n")
    assert doc.read_text() == ("intro\n<!-- a:start -->\nnew\n<!-- a:end -->\n"
                               "<!-- b:start -->\nkeep\n<!-- b:end -->\n")


def test_the_step_sampler_sees_memory_held_inside_a_step_only():
    import time
    import types

    import audit_phases
    import numpy as np

    def hold(megabytes: int) -> int:
        buffer = np.ones(megabytes << 20, np.uint8)  # touched: resident while the step runs
        time.sleep(0.3)
        return int(buffer[-1])

    owner = types.SimpleNamespace(hold=hold)
    sampler = audit_phases.Sampler(interval=0.01)
    sampler.wrap(owner, "hold")
    assert owner.hold(200) == 1
    time.sleep(0.1)
    sampler.close()
    entered, peak = sampler.peaks["start / hold"]
    assert peak - entered > 150  # the 200 MiB buffer, seen from inside the step
    assert "start / hold" in sampler.report()


def test_estimate_table_against_the_pool_reads_the_hidden_labels_and_keeps_tasks_apart(tmp_path):
    import hashlib

    import estimate_accuracy
    import numpy as np
    import pytest

    from finessl.config import apply_overrides, load_preset
    from finessl.eval.estimate import Outputs

    # The pool's hidden labels, cached where the benchmark keeps them: 3 of 4 predicted right.
    run = tmp_path / "run"
    key = hashlib.sha1(str(run.resolve()).encode()).hexdigest()[:16]
    np.save(tmp_path / f"{key}-pool-labels.npy", np.array([0, 1, 1, 2]))
    pool = np.eye(3)[[0, 1, 2, 2]] * 0.9 + 0.1 / 3
    out = Outputs(pool, calibration_labels=np.array([0, 1, 2]))
    assert estimate_accuracy.pool_top1_of(run, out, tmp_path) == 75.0
    # Capped at the pool's true shares (1/4, 1/2, 1/4), each prediction at confidence 0.9333:
    # classes 0 and 1 keep their mass 0.2333, class 2's 0.4667 is capped at 0.25 -> 71.67 %.
    # As recalls: 0.2333 / 0.25, 0.2333 / 0.5 and 0.25 / 0.25, at the labels' 1/3 each -> 80 %.
    found = estimate_accuracy.prior_estimates(run, out, tmp_path)
    assert found[estimate_accuracy.KNOWN_PRIOR] == pytest.approx(100 * (2 * (0.9 + 0.1 / 3) / 4 + 0.25))
    assert found["capped-recall, pool prior known"] == \
        pytest.approx(100 * (0.9333333 + 0.4666667 + 1) / 3)
    assert set(found) == {estimate_accuracy.prior_row(m, p) for m in estimate_accuracy.PRIOR_READERS
                          for p in ("known", "off by up to 2x")}
    # Roughly known shares: renormalised, changed, no two classes off by more than 4x apart.
    true = np.array([0.4, 0.3, 0.2, 0.05, 0.05])
    for seed in range(20):
        rough = estimate_accuracy.roughly(true, seed)
        factors = rough / true
        assert rough.sum() == pytest.approx(1.0) and not np.allclose(rough, true)
        assert factors.max() / factors.min() <= 4.0
    # A long-tailed pool is another task than the balanced one of the same dataset.
    balanced = load_preset("demo")
    tailed = apply_overrides(load_preset("demo"), {"data.unlabeled_imbalance": "10"})
    assert estimate_accuracy.task_of(run, balanced) == "fashion-mnist:all"
    assert estimate_accuracy.task_of(run, tailed) == "fashion-mnist:all, pool long-tailed 10"
    # Errors against the pool's own accuracy, not the test top-1: (60-70) and (90-80) -> 10 / 0.
    rows = [{"task": "t", "top1": 50.0, "pool_top1": 70.0, "estimates": {"confidence": 60.0}},
            {"task": "t", "top1": 50.0, "pool_top1": 80.0, "estimates": {"confidence": 90.0}}]
    text = estimate_accuracy.pool_truth(rows, ["confidence"])
    assert "mean +25.0" in text and "| confidence | 10.0 / +0.0 / – |" in text


def test_peer_agreement_pairs_seeds_in_order_and_compares_predictions(tmp_path, monkeypatch):
    import numpy as np
    import peer_agreement
    import pytest

    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    predicted = {1: [0, 1, 2, 0, 1, 2, 0, 1, 2, 0],   # 10 of 10 right
                 2: [0, 1, 2, 0, 1, 2, 0, 1, 0, 1],   # 8 right; agrees with seed 1 on 8
                 5: [1, 1, 2, 0, 1, 2, 0, 1, 0, 1]}   # 7 right; with 1 on 7, with 2 on 9
    runs = [tmp_path / f"seed{s}" for s in (5, 1, 2)]
    monkeypatch.setattr(peer_agreement, "group_of", lambda run: ("t", "a", int(run.name[4:])))
    monkeypatch.setattr(peer_agreement, "test_outputs", lambda run, cache, size: (
        np.eye(3)[predicted[int(run.name[4:])]] * 0.8 + 0.2 / 3, labels))
    rows = {r["seed"]: r for r in peer_agreement.rows_for(runs, tmp_path, 10)}
    # seeds 1 and 2 are a pair; 5, the odd one out, has no pair but two other seeds
    assert rows[1]["paired agreement"] == pytest.approx(80.0) == rows[2]["paired agreement"]
    assert rows[5]["paired agreement"] is None
    assert rows[5]["mean agreement with the other seeds"] == pytest.approx(80.0)
    assert rows[2]["mean agreement with the other seeds"] == pytest.approx(85.0)
    assert [rows[s]["truth"] for s in (1, 2, 5)] == pytest.approx([100.0, 80.0, 70.0])
    text = peer_agreement.table(list(rows.values()), 10)
    # paired: errors -20 (seed 1) and 0 (seed 2)
    assert "| paired agreement | 10.00 | 20.00 | -10.00 | – |" in text
