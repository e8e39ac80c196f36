"""Is a second seed's agreement an accuracy estimate? Runs of one task, several seeds each.

Jiang et al. (ICLR 2022): two networks trained alike from different seeds disagree on
unlabeled images about as often as either is wrong. Every run under ``--runs`` (a folder
with ``final.json`` and its adapter) predicts the same images: a seeded draw of
``--images`` test images that does not depend on the run, whose labels give each run's
true accuracy there and are read by nothing else. A run's *paired* estimate is its
agreement with one other seed of the same algorithm and task (the seeds paired in sorted
order: what a user gets by training once more), its *peers* estimate the mean agreement
with every other seed; both next to ``capped-confidence`` and ``confidence`` of the run on
the same images (no pool prior: the images are as balanced as the labels). Outputs are
cached under ``--cache``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peer_agreement.py \\
        --runs runs/bench-lt100-recall runs/bench-lt10-recall --doc docs/results.md
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

IMAGES = 2000
DRAW_SEED = 0


def test_outputs(run_dir: Path, cache: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The run's main-head probabilities on ``size`` test images drawn with ``DRAW_SEED``
    (the same images for every run of a dataset) and their labels (cached)."""
    key = hashlib.sha1(f"{run_dir.resolve()}:{size}".encode()).hexdigest()[:16]
    stored = cache / f"{key}-test.npz"
    if stored.is_file():
        data = np.load(stored)
        return data["probs"], data["labels"]
    from finessl.data.datasets import dataset_targets
    from finessl.eval.estimate import PoolImages, model_outputs
    from finessl.run import run_data

    predictor, data = run_data(run_dir, device="cpu")
    test = data.source.test
    labels_all = np.asarray(dataset_targets(test))
    indices = np.sort(np.random.default_rng(DRAW_SEED).choice(len(labels_all), size, replace=False))
    images = PoolImages(test, indices, data.transforms.test, predictor.image_size)
    out = model_outputs(predictor.model, images, None, predictor.device,
                        predictor.config.train.eval_batch_size, with_aux=False)
    if len(out.pool) != size:
        raise RuntimeError(f"{run_dir}: {size - len(out.pool)} test images unreadable")
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(stored, probs=out.pool, labels=labels_all[indices])
    return out.pool, labels_all[indices]


def group_of(run_dir: Path) -> tuple[str, str, int]:
    """(task, algorithm, seed) of a run, the task as ``estimate_accuracy.task_of`` names it."""
    from estimate_accuracy import task_of

    from finessl.rundir import RunDir

    config = RunDir(run_dir).read_config()
    return task_of(run_dir, config), config.algorithm.name, config.seed


def rows_for(runs: list[Path], cache: Path, size: int) -> list[dict]:
    """One row per run: its truth, its own estimates and its agreement with its seeds."""
    from finessl.eval.estimate import Outputs, capped_confidence, confidence, estimate

    by_group: dict[tuple[str, str], dict[int, tuple[Path, np.ndarray, np.ndarray]]] = defaultdict(dict)
    for run in runs:
        task, algorithm, seed = group_of(run)
        by_group[(task, algorithm)][seed] = (run, *test_outputs(run, cache, size))
    rows = []
    for (task, algorithm), seeds in sorted(by_group.items()):
        order = sorted(seeds)
        for position, seed in enumerate(order):
            run, probs, labels = seeds[seed]
            predicted = probs.argmax(1)
            others = [s for s in order if s != seed]
            agree = {s: float((predicted == seeds[s][1].argmax(1)).mean()) for s in others}
            mate = order[position ^ 1] if (position ^ 1) < len(order) else None
            C = probs.shape[1]
            balanced = Outputs(probs, calibration_labels=np.arange(C))  # one label per class
            paired = None
            if mate is not None:  # as ``finessl estimate --run RUN --peer MATE`` reads it
                paired = estimate(Outputs(probs, peer=seeds[mate][1]), "peer-agreement", seed=seed)
                assert paired.top1 == 100 * agree[mate]
            rows.append({"run": str(run), "task": task, "algorithm": algorithm, "seed": seed,
                         "truth": 100 * float((predicted == labels).mean()),
                         "capped-confidence": 100 * capped_confidence(balanced),
                         "confidence": 100 * confidence(balanced),
                         "paired agreement": paired.top1 if paired else None,
                         "paired interval": list(paired.interval) if paired else None,
                         "mean agreement with the other seeds":
                             100 * float(np.mean(list(agree.values()))) if agree else None})
    return rows


ESTIMATES = ("paired agreement", "mean agreement with the other seeds", "capped-confidence",
             "confidence")


def table(rows: list[dict], images: int) -> str:
    from estimate_accuracy import spearman

    tasks = sorted({r["task"] for r in rows})
    lines = [f"{len(rows)} runs, {len(tasks)} tasks, {images:,} test images each (labels read "
             "only for the truth)", "",
             "| estimate | mean abs. error | worst abs. error | mean signed error | "
             + " | ".join(f"Spearman, {t}" for t in tasks) + " |",
             "|---|---|---|---|" + "---|" * len(tasks)]
    for name in ESTIMATES:
        have = [r for r in rows if r[name] is not None]
        errors = np.array([r[name] - r["truth"] for r in have])
        ranks = []
        for task in tasks:
            within = [r for r in have if r["task"] == task]
            ranks.append(f"{spearman([r[name] for r in within], [r['truth'] for r in within]):.2f}"
                         if len(within) > 2 else "–")
        lines.append(f"| {name} | {np.abs(errors).mean():.2f} | {np.abs(errors).max():.2f} | "
                     f"{errors.mean():+.2f} | " + " | ".join(ranks) + " |")
    held = [r for r in rows if r["paired interval"]]
    inside = sum(r["paired interval"][0] <= r["truth"] <= r["paired interval"][1] for r in held)
    lines += ["", f"Paired agreement's interval (`finessl estimate --peer`: the bootstrap over the "
              f"images) holds the true top-1 for {inside} of {len(held)} runs."]
    lines += ["", "Per algorithm: mean true top-1 on these images / mean signed error of paired "
              "agreement / of capped-confidence", "",
              "| task | algorithm | runs | true top-1 | paired agreement | capped-confidence |",
              "|---|---|---|---|---|---|"]
    for task in tasks:
        for algorithm in sorted({r["algorithm"] for r in rows if r["task"] == task}):
            group = [r for r in rows if r["task"] == task and r["algorithm"] == algorithm]
            truth = np.mean([r["truth"] for r in group])
            paired = [r["paired agreement"] - r["truth"] for r in group if r["paired agreement"] is not None]
            capped = np.mean([r["capped-confidence"] - r["truth"] for r in group])
            lines.append(f"| {task} | {algorithm} | {len(group)} | {truth:.1f} | "
                         f"{np.mean(paired):+.1f} | {capped:+.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="folders of harness runs")
    parser.add_argument("--images", type=int, default=IMAGES, help="test images every run predicts")
    parser.add_argument("--cache", type=Path, default=Path("runs/peer-agreement-cache"))
    parser.add_argument("--doc", type=Path, help="write the table into this markdown file")
    parser.add_argument("--section", default="peer-agreement")
    args = parser.parse_args()
    started = time.time()
    runs = sorted(p.parent for root in args.runs for p in root.rglob("final.json"))
    rows = rows_for(runs, args.cache, args.images)
    text = table(rows, args.images)
    footer = f"\nMachine: {platform.machine()}, {time.time() - started:.0f} s for this table.\n"
    from estimate_accuracy import publish

    publish(text + footer, rows, args.cache, args.doc, args.section)


if __name__ == "__main__":
    main()
