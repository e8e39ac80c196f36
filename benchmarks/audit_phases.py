"""Where ``finessl audit``'s memory goes: the peak RSS within each of its steps.

A thread samples the process's resident memory every 20 ms while the audit's steps run
(each step's function is wrapped, by name, for this process only), and prints per step the
RSS on entering it and the highest seen inside it. Two ways to run it:

* the real command, with the same arguments as ``finessl audit``::

      OMP_NUM_THREADS=2 .venv/bin/python benchmarks/audit_phases.py audit --preset smoke \\
          --data.name folder --data.root runs/scale/audit-data-pool-1000000 \\
          --data.labels_per_class none --out /tmp/audit-1m --batch-size 256 --workers 1

* one neighbour search alone on a million rows (``--synthetic graph`` or ``copies``): the
  16 x 16 thumbnails of the 100,000 distinct images ``benchmarks/scale.py`` made, ten times
  over as a row file, and 64-d features projected from them; ``--budget`` sets
  ``PRODUCT_BUDGET`` to compare block sizes::

      OMP_NUM_THREADS=2 .venv/bin/python benchmarks/audit_phases.py --synthetic copies
"""

from __future__ import annotations

import argparse
import functools
import importlib
import resource
import runpy
import sys
import threading
import time
from pathlib import Path

from select_scale import memory_mib

STEPS = {  # module: functions whose time inside is one step
    "finessl.audit.audit": ["encoder", "build_ssl_data", "scan", "ood_check", "duplicate_groups", "_leaks",
                            "_in_task_probabilities", "label_suspects"],
    "finessl.audit.ood": ["PropagationGraph"],
    "finessl.audit.neighbours": ["_clustered_nearest", "top_k"],
    "finessl.audit.output": ["write_audit"],
}


class Sampler:
    """The peak RSS seen while each step (a path of nested step names) was running."""

    def __init__(self, interval: float = 0.02) -> None:
        self.stack, self.peaks, self.interval = ["start"], {}, interval
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            now, step = memory_mib("VmRSS"), " / ".join(self.stack)
            entered, peak = self.peaks.get(step, (now, now))
            self.peaks[step] = (entered, max(peak, now))
            if self._stop.wait(self.interval):
                return

    def close(self) -> None:
        self._stop.set()

    def wrap(self, owner, name: str) -> None:
        function = getattr(owner, name)

        @functools.wraps(function)
        def step(*args, **kwargs):
            self.stack.append(name)
            try:
                return function(*args, **kwargs)
            finally:
                self.stack.pop()

        setattr(owner, name, step)

    def report(self) -> str:
        lines = [f"{'step':72s} {'enter':>7s} {'peak':>7s}  MiB"]
        lines += [f"{step:72s} {entered:7.0f} {peak:7.0f}" for step, (entered, peak) in self.peaks.items()]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        lines.append(f"process peak (ru_maxrss): {peak:.0f} MiB")
        return "\n".join(lines)


def synthetic(distinct: Path, repeat: int):
    """(row files, digests) of ``repeat`` copies of every distinct image's thumbnail, and
    64-d unit features projected from them."""
    import numpy as np
    from PIL import Image

    from finessl.audit.row_file import RowFile
    from finessl.audit.scan import thumbnail

    files = sorted(distinct.glob("*/*.png"))
    if not files:
        raise SystemExit(f"no images under {distinct}: run benchmarks/scale.py first")
    thumbs = np.stack([thumbnail(Image.open(f)) for f in files]).astype(np.float32)
    features = thumbs @ np.random.default_rng(0).normal(size=(thumbs.shape[1], 64)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    stored_thumbs, stored_features = RowFile(thumbs.shape[1], np.float16), RowFile(64, np.float16)
    for _ in range(repeat):
        stored_thumbs.append(thumbs)
        stored_features.append(features)
    digests = np.tile(np.array([i.to_bytes(16, "little") for i in range(len(files))], "S16"), repeat)
    return stored_thumbs, stored_features, digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", choices=["graph", "copies"])
    parser.add_argument("--distinct", type=Path, default=Path("runs/scale/distinct"))
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--budget", type=int, help="PRODUCT_BUDGET (similarities a block)")
    args, command = parser.parse_known_args()
    from finessl.audit import neighbours
    from finessl.device import return_large_frees_to_the_os

    if args.budget:
        neighbours.PRODUCT_BUDGET = args.budget
    if args.synthetic:
        return_large_frees_to_the_os()  # as the audit command does
        thumbs, features, digests = synthetic(args.distinct, args.repeat)
    sampler = Sampler()
    for module, names in STEPS.items():
        for name in names:
            sampler.wrap(importlib.import_module(module), name)
    began = time.time()
    try:
        if args.synthetic == "graph":
            from finessl.audit.ood import PropagationGraph

            PropagationGraph(features)
        elif args.synthetic == "copies":
            from finessl.audit.audit import NEAR_SIMILARITY
            from finessl.audit.duplicates import duplicate_groups

            duplicate_groups(thumbs, features, digests, NEAR_SIMILARITY)
        else:
            sys.argv = ["finessl", *command]
            runpy.run_module("finessl", run_name="__main__")
    finally:
        time.sleep(3 * sampler.interval)
        sampler.close()
        print(f"{time.time() - began:.1f} s\n" + sampler.report(), file=sys.stderr)


if __name__ == "__main__":
    main()
