"""Results harness: a grid of presets (x tasks) x algorithms x seeds, resumable, as mean +- std.

Every cell is an ordinary run directory under ``--runs``; a finished cell (``final.json``)
is skipped, an interrupted one resumes from its checkpoint (or starts over if it had none).
The table goes to stdout and, with ``--doc``, into a marked section of a Markdown file
(other sections are kept).

CPU grid used in docs/results.md (Fashion-MNIST, 4 labels/class, EfficientNet-Lite0):

    .venv/bin/python benchmarks/harness.py --presets demo \\
        --algorithms supervised pseudolabel fixmatch flexmatch freematch softmatch debiaspl finessl \\
        --seeds 0 1 2 --set train.steps=400 train.steps_per_epoch=200 data.max_unlabeled=6400 \\
        data.max_test=2000 --runs runs/bench-ssl --doc docs/results.md --section ssl-cpu

``--task NAME:KEY=VALUE,KEY=VALUE`` (repeatable) runs every preset once per task, e.g. class
subsets: ``--task pair:data.classes=T-shirt/top;Shirt`` (``;`` separates list items).
``--variant LABEL:KEY=VALUE,...`` (repeatable) adds a row ``LABEL`` to the algorithms, e.g.
``--variant finessl-reference:algorithm.name=finessl,algorithm.pace=reference``.
On a GPU with the data and weights at hand, the paper grid is e.g.
``--presets cifar100-n4 cifar10-n4 --algorithms fixmatch flexmatch finessl --seeds 0 1 2``.
"""

from __future__ import annotations

import argparse
import logging
import platform
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

# The paper's own numbers (FineSSL, CLIP ViT-B/16 + VPT-deep, top-1 %), as published in
# Gan & Wei (ICML 2024); shown beside ours, never as ours.
PAPER_TOP1 = {
    ("cifar10-n1", "finessl"): 96.15, ("cifar10-n2", "finessl"): 96.87,
    ("cifar10-n4", "finessl"): 97.39, ("cifar100-n4", "finessl"): 80.44,
    ("cifar100-n25", "finessl"): 84.51, ("cifar100-n100", "finessl"): 86.66,
}


def run_cell(preset: str, algorithm: str, seed: int, overrides: dict[str, str], runs: Path,
             task: str = "") -> dict:
    from finessl.config import apply_overrides, load_preset
    from finessl.engine.callbacks import LogProgress
    from finessl.run import train
    from finessl.rundir import RunDir

    run_dir = runs / preset / task / algorithm / f"seed{seed}" if task else \
        runs / preset / algorithm / f"seed{seed}"
    run = RunDir(run_dir)
    if (run / RunDir.FINAL).is_file():
        return run.read_final()
    config = apply_overrides(load_preset(preset),
                             {"algorithm.name": algorithm, **overrides, "seed": str(seed)})
    resume = (run / RunDir.STATE).is_file()
    if not resume and run_dir.exists():  # stopped before its first checkpoint: start over
        shutil.rmtree(run_dir)
    return train(config, run_dir, callbacks=[LogProgress(200)], resume=resume)


def _values(per_class) -> list:
    return list(per_class.values()) if isinstance(per_class, dict) else list(per_class)


def _training_minutes(results: dict) -> float:
    """Minutes of training over every cell, resumed segments included (not this call's wall)."""
    return sum(f["seconds"] for finals in results.values() for f in finals) / 60


def summarise(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(results: dict, rows: list[tuple[str, str]], algorithms, seeds, overrides, command: str,
          seconds: float) -> str:
    with_tasks = any(task for _, task in rows)
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}; "
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); overrides "
        f"{' '.join(f'{k}={v}' for k, v in overrides.items()) or 'none'}; "
        f"training time {_training_minutes(results):.0f} min summed over the runs "
        f"(this invocation: {seconds / 60:.0f} min of wall time; finished runs are reused).",
        "",
        f"| preset |{' task |' if with_tasks else ''} algorithm | top-1 % | balanced acc. % | ECE | "
        "worst class % | minutes / run | paper top-1 % |",
        f"|---|{'---|' if with_tasks else ''}---|---:|---:|---:|---:|---:|---:|",
    ]
    for preset, task in rows:
        for algorithm in algorithms:
            finals = results[(preset, task, algorithm)]
            paper = PAPER_TOP1.get((preset, algorithm))
            worst = [min(v for v in _values(f["per_class_acc"]) if v is not None) for f in finals]
            lines.append(
                f"| {preset} |{f' {task} |' if with_tasks else ''} {algorithm} | "
                f"{summarise([f['top1'] for f in finals])} | "
                f"{summarise([f['balanced_acc'] for f in finals])} | "
                f"{summarise([f['ece'] for f in finals])} | {summarise(worst)} | "
                f"{statistics.mean(f['seconds'] for f in finals) / 60:.1f} | "
                f"{'' if paper is None else f'{paper:.2f} (paper)'} |")
    return "\n".join(lines) + "\n"


def write_section(doc: Path, section: str, text: str) -> None:
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    block = f"{start}\n{text}{end}"
    content = doc.read_text() if doc.is_file() else ""
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), flags=re.S)
    content = pattern.sub(lambda _: block, content) if pattern.search(content) else \
        content.rstrip() + "\n\n" + block + "\n"
    doc.write_text(content)


def parse_task(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE,KEY=VALUE`` -> (NAME, overrides); ``;`` in a value separates list items."""
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, value = item.split("=", 1)
        overrides[key] = value.replace(";", ",")
    return name, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--presets", nargs="+", required=True)
    parser.add_argument("--algorithms", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every cell")
    parser.add_argument("--task", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="run every preset once per task with these extra overrides")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE,...",
                        help="an extra row: an algorithm with overrides")
    parser.add_argument("--runs", default="runs/harness")
    parser.add_argument("--doc", help="Markdown file whose section gets the table")
    parser.add_argument("--section", default="results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    overrides = dict(item.split("=", 1) for item in args.set)
    tasks = dict(parse_task(t) for t in args.task) or {"": {}}
    variants = {name: {"algorithm.name": name} for name in args.algorithms}
    variants.update(parse_task(v) for v in args.variant)
    began = time.time()
    results, rows = {}, []
    for preset in args.presets:
        for task, task_overrides in tasks.items():
            rows.append((preset, task))
            for algorithm, variant in variants.items():
                results[(preset, task, algorithm)] = [
                    run_cell(preset, algorithm, seed, {**overrides, **task_overrides, **variant},
                             Path(args.runs), task) for seed in args.seeds
                ]
                logging.info("%s %s / %s: top1 %s", preset, task, algorithm,
                             summarise([f["top1"] for f in results[(preset, task, algorithm)]]))
    command = "python benchmarks/harness.py " + " ".join(sys.argv[1:])
    text = table(results, rows, list(variants), args.seeds, overrides, command, time.time() - began)
    print(text)
    if args.doc:
        write_section(Path(args.doc), args.section, text)


if __name__ == "__main__":
    main()
