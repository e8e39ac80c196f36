"""``finessl loop``: labeling rounds simulated on a dataset whose true labels are known.

Round 0 trains on the configured labels. Each next round asks ``suggest`` for ``budget``
images of the run's unlabeled pool, reveals their true labels (what a human labeler would
do), adds them to ``labels{r}.csv`` (``data.extra_labels``) and trains again with the same
budget of steps — warm-started from the previous round (``model.init_from``) unless
``cold``. The way to measure suggestion strategies against each other.
"""

from __future__ import annotations

import copy
import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from finessl.active.suggest import suggest
from finessl.config import Config, apply_overrides
from finessl.engine.callbacks import Callback
from finessl.errors import FinesslError
from finessl.run import train
from finessl.rundir import RunDir, write_json

log = logging.getLogger(__name__)


def reveal(config: Config, pool_indices: list[int]) -> list[str]:
    """The true class names of training-pool images (the simulation's labeler)."""
    from finessl.data.datasets import load_source

    source = load_source(config.data, config.seed)
    names = []
    for index in pool_indices:
        target = int(source.train_targets[index])
        if target < 0:
            raise FinesslError("finessl loop needs a dataset whose training images all have labels "
                               "(it reveals them round by round)")
        names.append(source.classes[target])
    return names


def run_loop(config: Config, output: str | Path, rounds: int, budget: int, strategy: str = "balanced",
             seed: int = 0, cold: bool = False, callbacks: Sequence[Callback] | None = None) -> list[dict]:
    """Trains ``rounds + 1`` runs in ``output/round{r}``; returns one summary per round."""
    output = Path(output)
    if config.data.extra_labels:
        raise FinesslError("finessl loop writes its own data.extra_labels; start without one")
    summary = []
    rows: list[tuple[str, str]] = []
    for round_ in range(rounds + 1):
        run_dir = output / f"round{round_}"
        overrides: dict[str, str] = {}
        if round_ > 0:
            previous = output / f"round{round_ - 1}"
            labels_file = output / f"labels{round_}.csv"  # everything revealed so far
            if labels_file.is_file():  # a resumed loop reuses what it revealed
                with labels_file.open(newline="") as handle:
                    rows = [tuple(r) for r in csv.reader(handle)][1:]
            else:
                report = suggest(previous, budget, strategy=strategy, seed=seed + round_)
                truth = reveal(config, [s.pool_index for s in report.suggestions])
                rows = rows + list(zip([s.id for s in report.suggestions], truth))
                with labels_file.open("w", newline="") as handle:
                    csv.writer(handle).writerows([("path", "label"), *rows])
            overrides["data.extra_labels"] = str(labels_file.resolve())
            if not cold:
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
    write_json(output / "loop.json", summary)
    return summary
