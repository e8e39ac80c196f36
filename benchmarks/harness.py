"""Results harness: a grid of presets x algorithms x seeds, resumable, summarised as mean +- std.

Every cell is an ordinary run directory under ``--runs``; a finished cell (``final.json``)
is skipped, an interrupted one resumes from its checkpoint. The table goes to stdout and,
with ``--doc``, into a marked section of a Markdown file (other sections are kept).

CPU grid used in docs/results.md (Fashion-MNIST, 4 labels/class, EfficientNet-Lite0):

    .venv/bin/python benchmarks/harness.py --presets demo \\
        --algorithms supervised pseudolabel fixmatch flexmatch freematch softmatch debiaspl finessl \\
        --seeds 0 1 2 --set train.steps=300 train.steps_per_epoch=300 data.max_test=5000 \\
        --runs runs/bench-ssl --doc docs/results.md --section ssl-cpu

On a GPU with the data and weights at hand, the paper grid is e.g.
``--presets cifar100-n4 cifar10-n4 --algorithms fixmatch flexmatch finessl --seeds 0 1 2``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import statistics
import time
from pathlib import Path

# The paper's own numbers (FineSSL, CLIP ViT-B/16 + VPT-deep, top-1 %), from
# shared/FINESSL_SPEC.md section 6; shown beside ours, never as ours.
PAPER_TOP1 = {
    ("cifar10-n1", "finessl"): 96.15, ("cifar10-n2", "finessl"): 96.87,
    ("cifar10-n4", "finessl"): 97.39, ("cifar100-n4", "finessl"): 80.44,
    ("cifar100-n25", "finessl"): 84.51, ("cifar100-n100", "finessl"): 86.66,
}


def run_cell(preset: str, algorithm: str, seed: int, overrides: dict[str, str], runs: Path) -> dict:
    from finessl.config import apply_overrides, load_preset
    from finessl.engine.trainer import LogProgress
    from finessl.run import train

    run_dir = runs / preset / algorithm / f"seed{seed}"
    final_file = run_dir / "final.json"
    if final_file.is_file():
        return json.loads(final_file.read_text())
    config = apply_overrides(load_preset(preset),
                             {**overrides, "algorithm.name": algorithm, "seed": str(seed)})
    resume = (run_dir / "state.pt").is_file()
    return train(config, run_dir, callbacks=[LogProgress(200)], resume=resume)


def summarise(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(results: dict, presets, algorithms, seeds, overrides, command: str, seconds: float) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}; "
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); overrides "
        f"{' '.join(f'{k}={v}' for k, v in overrides.items()) or 'none'}; "
        f"grid wall time {seconds / 60:.0f} min.",
        "",
        "| preset | algorithm | top-1 % | balanced acc. % | ECE | minutes / run | paper top-1 % |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for preset in presets:
        for algorithm in algorithms:
            finals = results[(preset, algorithm)]
            paper = PAPER_TOP1.get((preset, algorithm))
            lines.append(
                f"| {preset} | {algorithm} | {summarise([f['top1'] for f in finals])} | "
                f"{summarise([f['balanced_acc'] for f in finals])} | "
                f"{summarise([f['ece'] for f in finals])} | "
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--presets", nargs="+", required=True)
    parser.add_argument("--algorithms", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every cell")
    parser.add_argument("--runs", default="runs/harness")
    parser.add_argument("--doc", help="Markdown file whose section gets the table")
    parser.add_argument("--section", default="results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    overrides = dict(item.split("=", 1) for item in args.set)
    began = time.time()
    results = {}
    for preset in args.presets:
        for algorithm in args.algorithms:
            results[(preset, algorithm)] = [
                run_cell(preset, algorithm, seed, overrides, Path(args.runs)) for seed in args.seeds
            ]
            logging.info("%s / %s: top1 %s", preset, algorithm,
                         summarise([f["top1"] for f in results[(preset, algorithm)]]))
    import sys

    command = "python benchmarks/harness.py " + " ".join(sys.argv[1:])
    text = table(results, args.presets, args.algorithms, args.seeds, overrides, command,
                 time.time() - began)
    print(text)
    if args.doc:
        write_section(Path(args.doc), args.section, text)


if __name__ == "__main__":
    main()
