"""Which images to label next, measured: simulated labeling rounds per strategy, and the
cold start (the first labels, chosen before any training).

Rounds: for every seed, round 0 trains the ``demo`` preset (4 labels per class) once; then each
strategy runs ``--rounds`` rounds of ``finessl loop`` from that same round 0: suggest
``--budget`` images of the unlabeled pool, reveal their true labels, train again with the
same budget of steps, warm-started from the previous round. The table is the test
accuracy after each round, mean ± std over the seeds. No choice of any strategy was made
on test data (the strategies' constants are fixed in code, not tuned).

    .venv/bin/python benchmarks/label_next.py --seeds 0 1 2 --set train.steps=300 \\
        train.steps_per_epoch=150 data.max_unlabeled=6000 data.max_test=2000 \\
        --runs runs/label-next --doc docs/results.md --section label-next

Cold start (``--cold-start K [K ...]``): for every seed, K and strategy, ``finessl loop
--cold-start --rounds 0`` picks K images of the pool from the pretrained features (no seed
labels), reveals their labels and trains each ``--algorithms`` on them alone; the table is
the test accuracy. ``auto`` is ``typiclust`` before any training (the same picks), so it is
not trained twice. A cheaper measurement of both over frozen features with a linear probe,
on two datasets and with a held-out part of the training set, is ``label_next_probe.py``.

    .venv/bin/python benchmarks/label_next.py --cold-start 10 20 40 --seeds 0 1 \
        --strategies random typiclust probcover --algorithms finessl supervised \
        --set train.steps=200 data.max_unlabeled=3000 data.max_test=1000 \
        --runs runs/cold-start --doc docs/results.md --section cold-start
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

STRATEGIES = ("random", "entropy", "margin", "kcenter", "balanced", "typiclust", "probcover", "auto")


def summarise(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs", default="runs/label-next")
    parser.add_argument("--doc")
    parser.add_argument("--section", default="label-next")
    parser.add_argument("--cold-start", nargs="+", type=int, metavar="K",
                        help="measure the cold start with these budgets instead of rounds")
    parser.add_argument("--algorithms", nargs="+", default=["finessl", "supervised"],
                        help="(cold start) the algorithms trained on the first labels")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from finessl.active.loop import run_loop
    from finessl.config import apply_overrides, load_preset
    from finessl.engine.callbacks import LogProgress

    sys.path.insert(0, str(Path(__file__).parent))
    from harness import write_section

    overrides = dict(item.split("=", 1) for item in args.set)
    if args.cold_start:
        text = cold_start_table(args, overrides, write_section)
        print(text)
        if args.doc:
            write_section(Path(args.doc), args.section, text)
        return
    began = time.time()
    results: dict[str, list[list[dict]]] = {s: [] for s in args.strategies}
    for seed in args.seeds:
        first = None
        for strategy in args.strategies:
            out = Path(args.runs) / strategy / f"seed{seed}"
            if first is not None and not (out / "round0").exists():  # round 0 is shared
                out.mkdir(parents=True, exist_ok=True)
                shutil.copytree(first / "round0", out / "round0")
            config = apply_overrides(load_preset(args.preset), {**overrides, "seed": str(seed)})
            summary = run_loop(config, out, args.rounds, args.budget, strategy, seed=seed,
                               callbacks=[LogProgress(100)])
            results[strategy].append(summary)
            first = first or out
    loops = [loop for per_strategy in results.values() for loop in per_strategy]
    round0 = sum(loop[0]["seconds"] for loop in results[args.strategies[0]])  # shared per seed
    training = round0 + sum(r["seconds"] for loop in loops for r in loop[1:])
    lines = [
        f"Command: `python benchmarks/label_next.py {' '.join(sys.argv[1:])}`",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}; preset {args.preset}; "
        f"{len(args.seeds)} seeds; +{args.budget} labels per round; overrides "
        f"{' '.join(f'{k}={v}' for k, v in overrides.items()) or 'none'}; training time "
        f"{training / 60:.0f} min summed over the runs, round 0 once per seed (this invocation: "
        f"{(time.time() - began) / 60:.0f} min of wall time; finished rounds are reused).",
        "",
        "| strategy | " + " | ".join(f"round {r} top-1 %" for r in range(args.rounds + 1)) +
        " | last round balanced % |",
        "|---|" + "---:|" * (args.rounds + 2),
    ]
    for strategy, per_seed in results.items():
        cells = [summarise([s[r]["top1"] for s in per_seed]) for r in range(args.rounds + 1)]
        last = summarise([s[-1]["balanced_acc"] for s in per_seed])
        lines.append(f"| {strategy} | " + " | ".join(cells) + f" | {last} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.doc:
        write_section(Path(args.doc), args.section, text)


def cold_start_table(args, overrides: dict[str, str], write_section) -> str:
    from finessl.active.loop import run_loop
    from finessl.config import apply_overrides, load_preset
    from finessl.engine.callbacks import LogProgress

    began = time.time()
    top1: dict[tuple[str, str, int], list[float]] = {}
    seconds = 0.0
    for seed in args.seeds:
        for budget in args.cold_start:
            for strategy in args.strategies:
                for algorithm in args.algorithms:
                    out = Path(args.runs) / algorithm / f"k{budget}" / strategy / f"seed{seed}"
                    config = apply_overrides(load_preset(args.preset), {
                        **overrides, "algorithm.name": algorithm, "seed": str(seed)})
                    summary = run_loop(config, out, 0, budget, strategy, seed=seed,
                                       callbacks=[LogProgress(100)], cold_start=True)
                    top1.setdefault((algorithm, strategy, budget), []).append(summary[0]["top1"])
                    seconds += summary[0]["seconds"]
    lines = [
        f"Command: `python benchmarks/label_next.py {' '.join(sys.argv[1:])}`",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}; preset {args.preset}; "
        f"{len(args.seeds)} seeds ({' '.join(map(str, args.seeds))}); no seed labels, K first labels "
        f"chosen from the pretrained features; overrides "
        f"{' '.join(f'{k}={v}' for k, v in overrides.items()) or 'none'}; training time "
        f"{seconds / 60:.0f} min summed (this invocation: {(time.time() - began) / 60:.0f} min of "
        "wall time; finished runs are reused). Test top-1 %, mean ± std over the seeds; "
        "`auto` = `typiclust` before any training.",
        "",
        "| algorithm | first labels by | " + " | ".join(f"K = {k}" for k in args.cold_start) + " |",
        "|---|---|" + "---:|" * len(args.cold_start),
    ]
    for algorithm in args.algorithms:
        for strategy in args.strategies:
            cells = [summarise(top1[(algorithm, strategy, k)]) for k in args.cold_start]
            lines.append(f"| {algorithm} | {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
