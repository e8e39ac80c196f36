"""How good are the label-free accuracy estimates? Every finished run under ``--runs``.

For each run (a folder with ``final.json`` and its adapter): the run's model on a fixed
subset of its own unlabeled pool and on its labeled images under strong augmentation (the
calibration set), every estimator of ``finessl.eval.estimate``, against the run's measured
test top-1. Per estimator: mean and worst absolute error, mean signed error, the Spearman
rank correlation within each task (runs on the same data), and the same for the runs
without a warning. The model outputs are cached under ``--cache``. With ``--cross-fit K``
the runs whose K folds ``finessl estimate --run RUN --cross-fit K`` trained (RUN/cross-fit)
also get the cross-fitted estimators; a run without finished folds is left out of those
rows (nothing is trained here).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/estimate_accuracy.py \\
        --runs runs/bench-openset runs/bench-estimate --doc docs/results.md --section estimate
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

from finessl.eval.estimate import PRIOR_READERS

sys.path.insert(0, str(Path(__file__).parent))


def outputs_of(run_dir: Path, cache: Path):
    """The run's model outputs on its pool subset and calibration set (cached)."""
    from finessl.eval.estimate import Outputs

    key = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
    stored = cache / f"{key}.npz"
    if stored.is_file():
        data = np.load(stored)
        aux = data["pool_aux"] if data["pool_aux"].size else None
        return Outputs(data["pool"], aux, data["calibration"], data["calibration_labels"])
    from finessl.run import run_outputs

    out = run_outputs(run_dir, device="cpu")
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(stored, pool=out.pool, pool_aux=out.pool_aux if out.pool_aux is not None else np.zeros(0),
             calibration=out.calibration, calibration_labels=out.calibration_labels)
    return out


def held_out_of(run_dir: Path, folds: int, cache: Path):
    """The folds' held-out predictions (cached), or None where the folds are not finished."""
    from finessl.cross_fit import cross_fit
    from finessl.eval.estimate import HeldOut
    from finessl.rundir import RunDir

    folder = run_dir / RunDir.CROSS_FIT_FOLDS
    if not all((folder / f"fold-{k}" / RunDir.FINAL).is_file() for k in range(folds)):
        return None
    key = hashlib.sha1(f"{run_dir.resolve()}:{folds}".encode()).hexdigest()[:16]
    stored = cache / f"{key}-held-out.npz"
    if stored.is_file():
        data = np.load(stored)
        return HeldOut(data["probs"], data["labels"], data["pool_confidence"], data["pool_predictions"])
    held = cross_fit(run_dir, folds, device="cpu").held_out
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(stored, probs=held.probs, labels=held.labels, pool_confidence=held.pool_confidence,
             pool_predictions=held.pool_predictions)
    return held


def pool_labels_of(run_dir: Path, out, cache: Path) -> np.ndarray | None:
    """The hidden labels of the pool images the run was estimated on (cached; -1 for an
    image outside the task), or None where the pool has none."""
    key = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
    stored = cache / f"{key}-pool-labels.npy"
    if stored.is_file():
        labels = np.load(stored)
    else:
        from finessl.eval.estimate import pool_view
        from finessl.run import run_data

        predictor, data = run_data(run_dir, device="cpu")
        config = predictor.config  # the images estimates read, as finessl.run.run_outputs picks them
        indices = pool_view(data.source.train, data.unlabeled_indices, None, 0,
                            config.train.estimate_pool, config.seed).indices
        labels = np.asarray(data.source.train_targets)[indices]
        cache.mkdir(parents=True, exist_ok=True)
        np.save(stored, labels)
    return labels if len(labels) == len(out.pool) and (labels >= 0).any() else None


def pool_top1_of(run_dir: Path, out, cache: Path) -> float | None:
    """The model's accuracy (percent) on the pool images it was estimated on, from their
    hidden labels (task images only). On a pool whose classes are not as frequent as the
    test set's (a long tail), this, not the test top-1, is what an estimate on the pool
    measures."""
    labels = pool_labels_of(run_dir, out, cache)
    if labels is None:
        return None
    known = labels >= 0
    return float(100 * (out.pool[known].argmax(1) == labels[known]).mean())


# What a user who knows the pool's class shares gets (finessl estimate --pool-prior): the
# estimators that read a pool prior, at the shares a run was trained with (train.estimate_prior:
# "given"), at the true shares of the estimated images (an oracle only the benchmark can
# compute: "known"), and at those shares each off by up to a factor of two (a user who knows
# the tail's order of magnitude). The *-confidence ones read the pool's accuracy, the *-recall
# ones the accuracy at the labeled set's class mix (the balanced test set's).
PRIORS = ("given", "known", "off by up to 2x")


def prior_row(method: str, prior: str) -> str:
    return f"{method}, pool prior {prior}"


KNOWN_PRIOR = prior_row("capped-confidence", "known")
POOL_ROWS = [prior_row(m, p) for p in PRIORS for m in PRIOR_READERS if m.endswith("confidence")]
MIX_ROWS = [prior_row(m, p) for p in PRIORS for m in PRIOR_READERS if m.endswith("recall")]


def roughly(prior: np.ndarray, seed: int) -> np.ndarray:
    """``prior`` with each share times 2^u, u uniform on [-1, 1] (drawn with ``seed``),
    renormalised: no two classes' shares off from each other by more than a factor of four."""
    shares = prior * 2.0 ** np.random.default_rng(seed).uniform(-1.0, 1.0, len(prior))
    return shares / shares.sum()


def at_prior(out, prior: np.ndarray, name: str) -> dict[str, float]:
    """Every estimator that reads a pool prior (percent) on ``out`` at ``prior``."""
    from finessl.eval.estimate import ESTIMATORS, Outputs

    at = Outputs(out.pool, calibration_labels=out.calibration_labels, prior=prior)
    values = {prior_row(m, name): 100 * ESTIMATORS.get(m)(at) for m in PRIOR_READERS}
    return {k: v for k, v in values.items() if np.isfinite(v)}


def prior_estimates(run_dir: Path, out, cache: Path, seed: int = 0) -> dict[str, float]:
    """``at_prior`` the estimated pool images' true class shares and ``roughly`` them; empty
    where the pool has no hidden labels (the *-recall ones also need the calibration labels)."""
    labels = pool_labels_of(run_dir, out, cache)
    if labels is None:
        return {}
    known = labels[labels >= 0]
    true = np.bincount(known, minlength=out.pool.shape[1]) / len(known)
    return {**at_prior(out, true, "known"), **at_prior(out, roughly(true, seed), PRIORS[2])}


def task_of(run_dir: Path, config) -> str:
    """Runs on the same data: the dataset and its classes (or the open-set pool's folder),
    and the pool's long tail where it has one."""
    data = config.data
    if data.name in ("csv", "folder"):  # benchmarks/open_set_data.py: POOL/seedN/train.csv
        folder = Path(data.csv or data.root or "").parent
        task = (folder.parent.name if folder.name.startswith("seed") else folder.name) or data.name
    else:
        task = f"{data.name}:{','.join(data.classes or []) or 'all'}"
    tail = data.unlabeled_imbalance
    return task if tail == 1.0 else f"{task}, pool long-tailed {tail:g}"


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(b)) < 2 or len(set(a)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def table(rows: list[dict], methods: list[str], subset: str) -> str:
    lines = [f"{subset}: {len(rows)} runs, {len({r['task'] for r in rows})} tasks\n",
             "| estimator | mean abs. error | worst abs. error | mean signed error | "
             "Spearman within a task (median) |", "|---|---|---|---|---|"]
    for method in methods:
        pairs = [(r["estimates"].get(method), r["top1"]) for r in rows]
        pairs = [(e, t) for e, t in pairs if e is not None]
        if not pairs:
            continue
        errors = np.asarray([e - t for e, t in pairs])
        rhos = []
        for task in {r["task"] for r in rows}:
            group = [r for r in rows if r["task"] == task and method in r["estimates"]]
            rho = spearman([r["estimates"][method] for r in group], [r["top1"] for r in group])
            if rho == rho:
                rhos.append(rho)
        rho_text = f"{np.median(rhos):.2f} ({len(rhos)} tasks)" if rhos else "–"
        lines.append(f"| {method} | {np.abs(errors).mean():.2f} | {np.abs(errors).max():.2f} | "
                     f"{errors.mean():+.2f} | {rho_text} |")
    return "\n".join(lines)


def confidence_on_test(run_dir: Path) -> float | None:
    """Mean top-class probability on the test images (percent): images no run trained on,
    against the pool the semi-supervised ones did train on. A diagnostic, not an estimator."""
    from finessl.rundir import RunDir

    run = RunDir(run_dir)
    if not (run / RunDir.PREDICTIONS).is_file():
        return None
    logits, _ = run.load_predictions()
    return float(100 * logits.double().softmax(1).max(1).values.mean())


def pool_versus_test(rows: list[dict]) -> str:
    gaps = [r["test_confidence"] - r["estimates"]["confidence"] for r in rows
            if r.get("test_confidence") is not None]
    if not gaps:
        return ""
    return (f" Mean confidence on the test images minus on the pool: {np.mean(gaps):+.2f} points "
            f"({min(gaps):+.1f} to {max(gaps):+.1f}, {len(gaps)} runs).")


def pool_truth(rows: list[dict], methods: list[str]) -> str:
    """Every estimator against the accuracy on the pool images themselves (the runs whose pool
    has hidden labels): where the pool's classes are not as frequent as the test set's, this
    is what an estimate on the pool can be right about."""
    known = [r for r in rows if r.get("pool_top1") is not None]
    if not known:
        return ""
    gaps = [r["pool_top1"] - r["top1"] for r in known]
    return (f"Against the accuracy on the pool itself (pool top-1 minus test top-1: "
            f"{min(gaps):+.1f} to {max(gaps):+.1f}, mean {np.mean(gaps):+.1f}):\n\n"
            + per_task_table(known, [*methods, *POOL_ROWS], "pool_top1"))


def per_task_table(rows: list[dict], methods: list[str], truth: str = "top1") -> str:
    """Each estimator's mean absolute error, mean signed error and Spearman on each task:
    an estimator can be right on one dataset and far off on another."""
    tasks = sorted({r["task"] for r in rows})
    lines = ["Per task: mean abs. error / mean signed error / Spearman\n",
             "| estimator | " + " | ".join(f"{t} ({sum(r['task'] == t for r in rows)} runs)"
                                         for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for method in methods:
        cells = []
        for task in tasks:
            group = [r for r in rows if r["task"] == task and method in r["estimates"]]
            if not group:
                cells.append("–")
                continue
            errors = np.asarray([r["estimates"][method] - r[truth] for r in group])
            rho = spearman([r["estimates"][method] for r in group], [r[truth] for r in group])
            cells.append(f"{np.abs(errors).mean():.1f} / {errors.mean():+.1f} / "
                         + (f"{rho:.2f}" if rho == rho else "–"))
        if any(c != "–" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kept_by(evals: list[dict], method: str, margin: float) -> float:
    """The test top-1 that ``train.keep best-estimate`` would keep if it read ``method``'s
    estimate at every evaluation: the first of the highest, unless its lead over the last
    evaluation is ``margin`` points or less (the trainer's rule, replayed from metrics)."""
    values = [e["estimates"].get(method, float("nan")) for e in evals]
    if not all(np.isfinite(values)):
        return float("nan")
    best = int(np.argmax(values))
    return evals[best]["top1"] if values[best] - values[-1] > margin else evals[-1]["top1"]


# The rules replayed from metrics.jsonl beside the one the runs trained with.
REPLAYED = [("confidence", 0.0), ("confidence", 1.0), ("capped-confidence", 0.0),
            ("capped-confidence", 1.0), ("capped-recall", 0.0), ("capped-recall", 1.0),
            ("adjusted-recall", 1.0),
            ("atc", 1.0), ("doc", 1.0), ("agreement", 1.0)]


def checkpoint_rows(chosen: list[dict]) -> list[str]:
    last = np.asarray([r["last_top1"] for r in chosen])
    kept = np.asarray([r["top1"] for r in chosen])
    oracle = np.asarray([max(e["top1"] for e in r["evals"]) for r in chosen])

    def line(label: str, values: np.ndarray) -> str:
        """Over the runs the rule applies to (agreement: those with an auxiliary head)."""
        ok = np.isfinite(values)
        if ok.sum() < len(values):
            label += f" ({ok.sum()} of {len(values)} runs)"
        v, a, b = values[ok], last[ok], oracle[ok]
        return (f"| {label} | {v.mean():.2f} | {(v - a).mean():+.2f} | "
                f"{(v - b).mean():+.2f} | {(v - a).min():+.2f} |")

    lines = ["| kept | mean test top-1 | vs last | vs oracle | worst vs last |", "|---|---|---|---|---|",
             f"| last | {last.mean():.2f} | – | {(last - oracle).mean():+.2f} | – |",
             line("best-estimate (as trained)", kept)]
    for method, margin in REPLAYED:
        values = np.asarray([kept_by(r["evals"], method, margin) for r in chosen])
        if np.isfinite(values).any():
            lines.append(line(f"by {method}, margin {margin:g}", values))
    lines.append(f"| oracle (test set) | {oracle.mean():.2f} | {(oracle - last).mean():+.2f} | – | – |")
    return lines


def checkpoint_table(rows: list[dict]) -> str:
    """train.keep: the test top-1 of the kept step under last, best-estimate (as the runs
    were trained, and replayed with other estimators and margins) and the oracle (the best
    test top-1 of any evaluation), over the runs that kept by estimate; again over the runs
    that fell off late (last more than a point below the oracle), where the choice matters."""
    chosen = [r for r in rows if r.get("keep") == "best-estimate" and r["evals"]]
    if not chosen:
        return "No run here was trained with train.keep best-estimate."
    moved = sum(r["kept_step"] != r["steps"] for r in chosen)
    counts = [len(r["evals"]) for r in chosen]
    margins = sorted({r.get("keep_margin") for r in chosen}, key=str)
    fell = [r for r in chosen if max(e["top1"] for e in r["evals"]) - r["last_top1"] > 1.0]
    parts = [f"Checkpoint choice: {len(chosen)} runs with train.keep best-estimate "
             f"(train.keep_margin {', '.join(str(m) for m in margins)}), "
             f"{'-'.join(str(n) for n in sorted({min(counts), max(counts)}))} evaluations each; "
             f"the kept step was not the last in {moved}.\n",
             *checkpoint_rows(chosen)]
    if fell:
        parts += [f"\nThe {len(fell)} of them whose last evaluation was more than a point below "
                  "their best (by test top-1):\n", *checkpoint_rows(fell)]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench-estimate-cache"))
    parser.add_argument("--doc", type=Path)
    parser.add_argument("--section", default="estimate")
    parser.add_argument("--cross-fit", type=int, default=0, metavar="K",
                        help="also the cross-fitted estimators, from each run's K finished folds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from finessl.eval.estimate import (
        CROSS_FITTED,
        DEFAULT_CROSS_FITTED,
        ESTIMATORS,
        estimate,
        read_pool_prior,
    )
    from finessl.rundir import RunDir

    began = time.time()
    rows = []
    for root in args.runs:
        for final in sorted(root.rglob(RunDir.FINAL)):
            if final.parent.parent.name == RunDir.CROSS_FIT_FOLDS:  # a cross-fitting fold, not a run
                continue
            run = RunDir(final.parent)
            config = run.read_config()
            out = outputs_of(final.parent, args.cache)
            result = estimate(out, seed=config.seed)
            crossed = None
            if args.cross_fit:
                out.held_out = held_out_of(final.parent, args.cross_fit, args.cache)
                if out.held_out is not None:
                    crossed = estimate(out, DEFAULT_CROSS_FITTED, seed=config.seed)
            done = run.read_final()
            evals = [{"step": r["step"], "top1": r["top1"], "estimates": r.get("estimates") or {}}
                     for r in run.read_metrics() if r.get("kind") == "eval" and r.get("top1") is not None]
            rows.append({"run": str(final.parent), "task": task_of(final.parent, config),
                         "algorithm": config.algorithm.name, "top1": done["top1"],
                         "keep": config.train.keep, "kept_step": done.get("kept_step"),
                         "keep_margin": config.train.keep_margin,
                         "steps": done["steps"], "last_top1": done.get("last_top1", done["top1"]),
                         "evals": evals, "test_confidence": confidence_on_test(final.parent),
                         "pool_top1": pool_top1_of(final.parent, out, args.cache),
                         "estimates": {**result.methods, "default": result.top1,
                                       **(crossed.methods if crossed else {})},
                         "interval": result.interval, "warnings": result.warnings,
                         "cross_fit_interval": crossed.interval if crossed else None})
            if config.train.estimate_prior:  # the shares the run was given, as it read them
                given = read_pool_prior(config.train.estimate_prior, list(done["per_class_acc"]))
                rows[-1]["estimates"].update(at_prior(out, given, "given"))
            rows[-1]["estimates"].update(prior_estimates(final.parent, out, args.cache, config.seed))
            print(f"{final.parent}: top1 {rows[-1]['top1']:.2f} "
                  + " ".join(f"{k} {v:.1f}" for k, v in rows[-1]["estimates"].items()), flush=True)
    methods = ["default", *ESTIMATORS.names(), *MIX_ROWS, *CROSS_FITTED.names()]
    inside = np.mean([r["interval"][0] <= r["top1"] <= r["interval"][1] for r in rows]) if rows else 0
    crossed_rows = [r for r in rows if r["cross_fit_interval"]]
    held = [r["cross_fit_interval"][0] <= r["top1"] <= r["cross_fit_interval"][1] for r in crossed_rows]
    covered = (f" The cross-fitted default's ({DEFAULT_CROSS_FITTED}) interval holds it for "
               f"{100 * np.mean(held):.0f} % of the {len(held)} cross-fitted runs." if held else "")
    text = "\n\n".join([
        table(rows, methods, "Every run"),
        table([r for r in rows if not r["warnings"]], methods, "Runs without a warning"),
        table([r for r in rows if r["warnings"]], methods, "Runs with a warning"),
        per_task_table(rows, methods),
        pool_truth(rows, methods),
        f"The default's interval holds the measured top-1 for {100 * inside:.0f} % of the runs."
        + covered + pool_versus_test(rows),
        checkpoint_table(rows),
    ])
    footer = (f"\n\nMachine: {platform.processor() or platform.machine()}, "
              f"{time.time() - began:.0f} s for this table.")
    publish(text + footer, rows, args.cache, args.doc, args.section)


def publish(text: str, rows: list[dict], cache: Path, doc: Path | None, section: str) -> None:
    """Prints a benchmark's table, keeps its rows in ``cache/rows.json`` and, with ``doc``,
    writes the table into that file's ``section``."""
    print(text)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "rows.json").write_text(json.dumps(rows, indent=1))
    if doc:
        from harness import write_section

        write_section(doc, section, text)


if __name__ == "__main__":
    main()
