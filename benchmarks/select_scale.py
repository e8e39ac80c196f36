"""How the feature strategies scale: time and peak memory of one selection on a large pool.

The pool is ``--pool`` float16 unit feature rows (``--dims`` wide, drawn around ``--clusters``
random centres: what a backbone's features of a real pool look like to the strategies),
plus ``--labeled`` labeled rows; each strategy picks ``--budget`` images, in a fresh process
per strategy. Memory: the process's resident size once the features are built, and its
high-water mark during the selection alone (Linux: ``/proc/self/clear_refs`` resets it) —
the point of the chunked code is that the selection adds a small multiple of the features,
never N x N or N x labeled.

    .venv/bin/python benchmarks/select_scale.py --pool 1000000 --dims 512 --budget 100 \\
        --doc docs/results.md --section select-scale
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path


def pool_features(size: int, dims: int, clusters: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dims)).astype(np.float32)
    out = np.empty((size, dims), np.float16)
    for start in range(0, size, 65536):  # built in blocks: float16 only
        stop = min(size, start + 65536)
        block = centres[rng.integers(clusters, size=stop - start)]
        block += 0.7 * rng.normal(size=block.shape).astype(np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def one(args) -> dict:
    import numpy as np

    from finessl.active.strategies import STRATEGIES, Pool

    features = pool_features(args.pool, args.dims, args.clusters, 0)
    labeled = pool_features(args.labeled, args.dims, args.clusters, 1) if args.labeled else None
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts from here
    before = memory_mib("VmRSS")
    began = time.perf_counter()
    pool = Pool(None, features, labeled, classes=args.classes)
    picks = STRATEGIES.get(args.one)(pool, args.budget, np.random.default_rng(0))
    seconds = time.perf_counter() - began
    assert len({p.index for p in picks}) == args.budget
    return {"strategy": args.one, "seconds": seconds, "features_mib": features.nbytes / 2**20,
            "rss_before_mib": before, "peak_mib": memory_mib("VmHWM")}


def memory_mib(field: str) -> float:
    """A field of /proc/self/status (VmRSS: resident now, VmHWM: its high-water mark), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--labeled", type=int, default=40)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--strategies", nargs="+", default=["kcenter", "typiclust", "probcover", "random"])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--doc")
    parser.add_argument("--section", default="select-scale")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    rows = []
    for strategy in args.strategies:
        command = [sys.executable, __file__, "--one", strategy, "--pool", str(args.pool), "--dims",
                   str(args.dims), "--clusters", str(args.clusters), "--classes", str(args.classes),
                   "--labeled", str(args.labeled), "--budget", str(args.budget)]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    lines = [f"Command: `python benchmarks/select_scale.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {platform.machine()}, Python {platform.python_version()}, CPU only; "
             f"{args.pool:,} pool rows x {args.dims} float16 features, {args.labeled} labeled, "
             f"budget {args.budget}; one fresh process per strategy.", "",
             "| strategy | seconds | features MiB | process with the features MiB "
             "| peak while selecting MiB |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['strategy']} | {r['seconds']:.1f} | {r['features_mib']:.0f} | "
              f"{r['rss_before_mib']:.0f} | {r['peak_mib']:.0f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.doc:
        sys.path.insert(0, str(Path(__file__).parent))
        from harness import write_section

        write_section(Path(args.doc), args.section, text)


if __name__ == "__main__":
    main()
