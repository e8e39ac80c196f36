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
