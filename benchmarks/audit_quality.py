"""How good is ``finessl audit``? Measured on pools whose truth is known (open_set_data.py).

For each pool: the OOD score's AUROC (foreign vs task images of the pool), the estimated vs
the true foreign share, planted test copies found (exact and re-encoded), false test-copy
claims, flipped seed labels among the top 2k suspects (k flipped), and the error of the
pool prior estimate. ``--held-out`` builds every pool from Fashion-MNIST's training split
only: the numbers to choose constants (score, similarity threshold) on.

    .venv/bin/python benchmarks/audit_quality.py --seeds 0 1 2 --runs runs/bench-audit \\
        --doc docs/results.md --section audit-quality
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from open_set_data import TASK, PoolSpec, build, overrides  # noqa: E402

POOLS = {  # name: spec fields
    "clean": dict(mismatch=0.0),
    "mismatch-25": dict(mismatch=0.25),
    "mismatch-50": dict(mismatch=0.5),
    "mismatch-75": dict(mismatch=0.75),
    "other-source-50": dict(mismatch=0.5, source="digits"),
    "leaks+flips": dict(mismatch=0.25, exact_copies=20, reencoded_copies=20, flip=0.1,
                        labels_per_class=10),
    "long-tail-10": dict(mismatch=0.0, imbalance=10.0),
}


def measure(name: str, seed: int, runs: Path, held_out: bool, score: str, near: float,
            preset: str, image_size: str, trained: Path | None = None) -> dict:
    from finessl.audit.audit import AuditSettings, audit
    from finessl.audit.ood import auroc
    from finessl.audit.output import audit_dict
    from finessl.config import apply_overrides, load_preset

    folder = runs / ("held-out" if held_out else "test") / name / f"seed{seed}"
    if not (folder / "truth.json").is_file():
        build(PoolSpec(**POOLS[name], seed=seed, held_out=held_out), folder)
    truth = json.loads((folder / "truth.json").read_text())
    config = apply_overrides(load_preset(preset), {**overrides(folder), "model.image_size": image_size,
                                                   "data.num_workers": "0"})
    run_dir = None
    if trained is not None:  # the FineSSL run open_set.py trained on this pool and seed
        run_dir = trained / "demo" / name / "finessl" / f"seed{seed}"
        if not (run_dir / "final.json").is_file():
            return {"pool": name, "seed": seed}
    result = audit(config, str(run_dir) if run_dir else None,
                   AuditSettings(score=score, near_similarity=near, batch_size=256))
    data = audit_dict(result)
    pool_names = result.names["pool"]
    foreign = np.asarray([truth["pool"][p] == "foreign" for p in pool_names])
    row = {"pool": name, "seed": seed, "auroc": auroc(result.ood_scores, foreign),
           "ood_true": float(foreign.mean()), "ood_est": data["ood_fraction"]}
    planted = {(leak["path"], leak["test_path"]): leak["kind"] for leak in truth["leaks"]}
    found = {(leak["path"], leak["test_path"]) for leak in data["test_leaks"]}
    for kind in ("exact", "reencoded"):
        wanted = [pair for pair, k in planted.items() if k == kind]
        if wanted:
            row[f"found_{kind}"] = sum(pair in found for pair in wanted) / len(wanted)
    row["false_leaks"] = len(found - set(planted))
    if truth["flipped"]:
        flipped = {f["path"] for f in truth["flipped"]}
        top = [s["path"] for s in data["label_suspects"][: 2 * len(flipped)]]
        row["flip_recall_2k"] = sum(p in flipped for p in top) / len(flipped)
    task = [truth["pool"][p] for p in pool_names if truth["pool"][p] != "foreign"]
    true_prior = np.asarray([task.count(c) for c in TASK], float) / max(len(task), 1)
    estimate = np.asarray([data["pool_prior"][c] for c in TASK])
    row["prior_max_err"] = float(np.abs(estimate - true_prior).max())
    row["prior_l1"] = float(np.abs(estimate - true_prior).sum())
    row["dup_groups"] = len(data["duplicates"])
    return row


def table(rows: list[dict]) -> str:
    keys = ["auroc", "ood_true", "ood_est", "found_exact", "found_reencoded", "false_leaks",
            "flip_recall_2k", "prior_max_err", "prior_l1"]
    lines = ["| pool | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for pool in dict.fromkeys(r["pool"] for r in rows):
        group = [r for r in rows if r["pool"] == pool]
        cells = []
        for key in keys:
            values = [r[key] for r in group if key in r and r[key] == r[key]]
            cells.append(f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"
                         if values else "–")
        lines.append(f"| {pool} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", nargs="+", default=list(POOLS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-audit"))
    parser.add_argument("--held-out", action="store_true")
    parser.add_argument("--scores", nargs="+", default=["knn", "prototype"])
    parser.add_argument("--near", type=float, default=None)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--image-size", default="64")
    parser.add_argument("--trained", type=Path, help="audit with the FineSSL runs of "
                        "benchmarks/open_set.py in this folder instead of the pretrained model")
    parser.add_argument("--exact-up-to", type=int, default=None,
                        help="rows up to which neighbour searches are exact (0: the clustered "
                        "search of large pools on every pool, to measure what it changes)")
    parser.add_argument("--doc", type=Path)
    parser.add_argument("--section", default="audit-quality")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.exact_up_to is not None:
        from finessl.audit import neighbours

        neighbours.EXACT_UP_TO = args.exact_up_to
    from finessl.audit.audit import NEAR_SIMILARITY

    near = args.near if args.near is not None else NEAR_SIMILARITY
    began = time.time()
    out = []
    for score in args.scores:
        rows = [measure(p, s, args.runs, args.held_out, score, near, args.preset, args.image_size,
                        args.trained) for p in args.pools for s in args.seeds]
        model = ("the trained FineSSL run of each pool" if args.trained else
                 f"the pretrained {args.preset} model at {args.image_size} px")
        text = (f"OOD score `{score}`, near-copy similarity {near}, {model}, seeds {args.seeds}"
                + (", held-out pools (training split only)" if args.held_out else "")
                + (f", exact neighbour searches up to {args.exact_up_to} rows" if args.exact_up_to is not None
                   else "") + ":\n\n" + table(rows))
        print(text + "\n", flush=True)
        out.append(text)
        tag = ("-held-out" if args.held_out else "") + ("-trained" if args.trained else "") + \
            (f"-exact{args.exact_up_to}" if args.exact_up_to is not None else "")
        (args.runs / f"rows-{score}{tag}.json").write_text(
            json.dumps(rows, indent=1))
    footer = (f"\n\nMachine: {platform.processor() or platform.machine()}, "
              f"{time.time() - began:.0f} s for this table.")
    if args.doc:
        from harness import write_section

        write_section(args.doc, args.section, "\n\n".join(out) + footer)


if __name__ == "__main__":
    main()
