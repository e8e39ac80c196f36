"""Class-mismatch benchmark (the protocol of Oliver et al., NeurIPS 2018) on CPU.

Fashion-MNIST, six classes in the label set (4 labels each); the unlabeled pool (3,200
images) mixes in images of the four other classes at 0 / 25 / 50 / 75 %, or 50 % images
from another source (digits, noise, blank frames). The demo model and the CPU grid's
budget (200 steps). Rows: supervised, FixMatch, FineSSL (today's default) and FineSSL with
``algorithm.ood filter``; 3 seeds. Besides top-1 and the worst class: the mask rate (the
share of pool images the final model would pseudo-label, confidence >= the threshold; a
dropped image counts as masked) on foreign vs task images.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/open_set.py --seeds 0 1 2 \\
        --runs runs/bench-openset --doc docs/results.md --section open-set
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from harness import run_cell, summarise, write_section  # noqa: E402
from open_set_data import PoolSpec, build, overrides  # noqa: E402

POOLS = {"clean": dict(mismatch=0.0), "mismatch-25": dict(mismatch=0.25),
         "mismatch-50": dict(mismatch=0.5), "mismatch-75": dict(mismatch=0.75),
         "other-source-50": dict(mismatch=0.5, source="digits")}
ROWS = {"supervised": {"algorithm.name": "supervised"}, "fixmatch": {"algorithm.name": "fixmatch"},
        "finessl": {"algorithm.name": "finessl"},
        "finessl+ood": {"algorithm.name": "finessl", "algorithm.ood": "filter"}}
BUDGET = {"train.steps": "200", "train.steps_per_epoch": "100", "train.tensorboard": "false",
          "data.num_workers": "1"}


def mask_rates(run_dir: Path, truth: dict) -> dict:
    """Share of foreign / task pool images at or above the threshold under the final model."""
    cache = run_dir / "mask_rates.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from finessl.inference import load
    from finessl.rundir import RunDir

    predictor = load(run_dir, "cpu")
    paths = sorted(truth["pool"])
    confidence = {p.path: p.confidence for p in predictor.predict(paths, batch_size=256).predictions}
    dropped = set()
    listing = run_dir / RunDir.OOD_EXCLUDED
    if listing.is_file():
        dropped = {line.split(",")[1] for line in listing.read_text().splitlines()[1:]}
    threshold = predictor.config.algorithm.threshold
    passed = {p: confidence.get(p, 0.0) >= threshold and p not in dropped for p in paths}
    foreign = [passed[p] for p in paths if truth["pool"][p] == "foreign"]
    task = [passed[p] for p in paths if truth["pool"][p] != "foreign"]
    rates = {"foreign": float(np.mean(foreign)) if foreign else None, "task": float(np.mean(task)),
             "dropped": len(dropped),
             "dropped_foreign": sum(truth["pool"].get(p) == "foreign" for p in dropped)}
    cache.write_text(json.dumps(rates))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", nargs="+", default=list(POOLS))
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-openset"))
    parser.add_argument("--doc", type=Path)
    parser.add_argument("--section", default="open-set")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every run (after the budget's)")
    args = parser.parse_args()
    budget = {**BUDGET, **dict(item.split("=", 1) for item in args.set)}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    began = time.time()
    results = {}
    for pool in args.pools:
        for seed in args.seeds:
            folder = args.runs / "data" / pool / f"seed{seed}"
            if not (folder / "truth.json").is_file():
                build(PoolSpec(**POOLS[pool], seed=seed), folder)
            truth = json.loads((folder / "truth.json").read_text())
            for row in args.rows:
                final = run_cell("demo", row, seed, {**budget, **overrides(folder), **ROWS[row]},
                                 args.runs, pool)
                run_dir = args.runs / "demo" / pool / row / f"seed{seed}"
                results.setdefault((pool, row), []).append((final, mask_rates(run_dir, truth)))
    lines = [f"Command: `python benchmarks/open_set.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {platform.machine()}, {platform.system()}; seeds {args.seeds}; demo preset "
             f"with {' '.join(f'{k}={v}' for k, v in budget.items())}; training time "
             f"{sum(f['seconds'] for v in results.values() for f, _ in v) / 60:.0f} min summed over "
             f"the runs (this invocation: {(time.time() - began) / 60:.0f} min).", "",
             "| pool | algorithm | top-1 % | worst class % | mask rate, foreign % | mask rate, task % "
             "| dropped (foreign) |", "|---|---|---:|---:|---:|---:|---:|"]
    for pool in args.pools:
        for row in args.rows:
            cells = results[(pool, row)]
            worst = [min(v for v in f["per_class_acc"].values() if v is not None) for f, _ in cells]
            foreign = [100 * m["foreign"] for _, m in cells if m["foreign"] is not None]
            dropped = (f"{statistics.mean(m['dropped'] for _, m in cells):.0f} "
                       f"({statistics.mean(m['dropped_foreign'] for _, m in cells):.0f})"
                       if row.endswith("+ood") else "")
            lines.append(f"| {pool} | {row} | {summarise([f['top1'] for f, _ in cells])} | "
                         f"{summarise(worst)} | {summarise(foreign) if foreign else '–'} | "
                         f"{summarise([100 * m['task'] for _, m in cells])} | {dropped} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.doc:
        write_section(args.doc, args.section, text)


if __name__ == "__main__":
    main()
