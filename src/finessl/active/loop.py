"""``finessl loop``: labeling rounds simulated on a dataset whose true labels are known.

Round 0 trains on the configured labels — or, with ``cold_start``, on ``budget`` images
the strategy picks from the pretrained features before any training (``labels0.csv``, no
seed labels at all). Each next round asks ``suggest`` for ``budget`` images of the run's
unlabeled pool, reveals their true labels (what a human labeler would do), adds them to
``labels{r}.csv`` (``data.extra_labels``) and trains again with the same budget of steps —
warm-started from the previous round (``model.init_from``) unless ``cold``. The way to
measure suggestion strategies against each other.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from finessl.active.cold_start import cold_start as first_labels
from finessl.active.suggest import SuggestionReport, suggest
from finessl.config import Config, apply_overrides
from finessl.engine.callbacks import Callback
from finessl.errors import FinesslError
from finessl.run import train
from finessl.rundir import RunDir, write_json

log = logging.getLogger(__name__)


NEEDS_LABELS = ("finessl loop needs a dataset whose training images all have labels (it reveals "
                "them round by round); this one has {} unlabeled image(s)")


def reveal(config: Config, pool_indices: list[int]) -> list[str]:
    """The true class names of training-pool images (the simulation's labeler)."""
    from finessl.data.datasets import load_source

    source = load_source(config.data, config.seed)
    targets = source.train_targets[np.asarray(pool_indices, dtype=np.int64)]
    if (targets < 0).any():
        raise FinesslError(NEEDS_LABELS.format(int((targets < 0).sum())))
    return [source.classes[int(t)] for t in targets]


def check_can_reveal(config: Config) -> None:
    """Before round 0: every image of the pool must have a label to reveal, and a test set
    must measure the rounds."""
    from finessl.data.datasets import load_source

    source = load_source(config.data, config.seed)
    targets = source.train_targets
    if (targets < 0).any():
        raise FinesslError(NEEDS_LABELS.format(int((targets < 0).sum())))
    if not source.test_given or len(source.test) == 0:
        raise FinesslError("a simulated loop compares rounds on a test set; this data has none "
                           "(give a test folder or data.test_csv)")


def check_same_loop(output: Path, plan: dict) -> None:
    """A loop re-run into its folder must be the same loop (it reuses the rounds there)."""
    path = output / PLAN
    if not path.is_file():
        if any(output.glob("round*")):
            raise FinesslError(f"{output} holds rounds of an earlier loop without its {PLAN}; "
                               "choose another --output")
        return
    try:
        before = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise FinesslError(f"{path} is damaged; choose another --output") from None
    changed = [k for k in plan if not isinstance(before, dict) or before.get(k) != plan[k]]
    changed = [k for k in changed if k != "rounds"]  # more rounds extend the same loop
    if changed:
        key = changed[0]
        was = before.get(key) if isinstance(before, dict) else None
        raise FinesslError(f"{output} holds a loop with {key} {was!r}, not {plan[key]!r}; its rounds "
                           "would be reused under the new setting. Choose another --output")


# The loop folder holds round0/, round1/ ... (run directories), labelsN.csv and these two.
PLAN = "loop-plan.json"
SUMMARY = "loop.json"  # one line per round: extra labels, top-1, time


def reveal_into(config: Config, labels_file: Path, report: SuggestionReport,
                rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``rows`` plus the suggested images with their true labels, written to ``labels_file``
    (a resumed loop reads it back instead of suggesting again)."""
    truth = reveal(config, [s.pool_index for s in report.suggestions])
    rows = rows + list(zip([s.id for s in report.suggestions], truth))
    with labels_file.open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    return rows


def read_revealed(labels_file: Path) -> list[tuple[str, str]]:
    with labels_file.open(newline="") as handle:
        return [tuple(r) for r in csv.reader(handle)][1:]


def run_loop(config: Config, output: str | Path, rounds: int, budget: int, strategy: str = "auto",
             seed: int = 0, cold: bool = False, callbacks: Sequence[Callback] | None = None,
             cold_start: bool = False) -> list[dict]:
    """Trains ``rounds + 1`` runs in ``output/round{r}``; returns one summary per round."""
    output = Path(output)
    if config.data.extra_labels:
        raise FinesslError("finessl loop writes its own data.extra_labels; start without one")
    if output.exists() and not output.is_dir():
        raise FinesslError(f"--output {output} exists and is not a folder")
    plan = {"rounds": rounds, "budget": budget, "strategy": strategy, "seed": seed, "cold": cold,
            "config": config.to_dict()}
    if cold_start:  # a key only when set: loops written before it stay the same loop
        plan["cold_start"] = True
    check_same_loop(output, plan)
    check_can_reveal(config)
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / PLAN, plan)
    summary = []
    rows: list[tuple[str, str]] = []
    for round_ in range(rounds + 1):
        run_dir = output / f"round{round_}"
        overrides: dict[str, str] = {"data.labels_per_class": "0"} if cold_start else {}
        labels_file = output / f"labels{round_}.csv"  # everything revealed so far
        if round_ > 0 or cold_start:
            previous = output / f"round{round_ - 1}"
            if labels_file.is_file():  # a resumed loop reuses what it revealed
                rows = read_revealed(labels_file)
            else:
                report = suggest(previous, budget, strategy=strategy, seed=seed + round_) if round_ \
                    else first_labels(config, budget, strategy=strategy, seed=seed)
                rows = reveal_into(config, labels_file, report, rows)
            overrides["data.extra_labels"] = str(labels_file.resolve())
            if round_ > 0 and not cold:
                overrides["model.init_from"] = str(previous.resolve())
        round_config = apply_overrides(copy.deepcopy(config), overrides)
        run = RunDir(run_dir)
        if (run / RunDir.FINAL).is_file():
            final = run.read_final()
        else:
            final = train(round_config, run_dir, callbacks=callbacks,
                          resume=(run / RunDir.STATE).is_file())
        summary.append({"round": round_, "extra_labels": len(rows), "top1": final["top1"],
                        "balanced_acc": final["balanced_acc"], "seconds": final["seconds"],
                        "strategy": strategy, "seed": seed})
        log.info("round %d: %d extra labels, top1 %.2f", round_, len(rows), final["top1"])
    write_json(output / SUMMARY, summary)
    return summary
