"""Label-next strategies measured over frozen features with a linear probe: 5 seeds, two
datasets, seconds per round instead of minutes.

Features: one pass of the ``demo`` preset's pretrained backbone (EfficientNet-Lite0,
ImageNet weights, 64 px) over each dataset, cached under ``--runs``. The model that scores
the pool and is measured is a logistic-regression probe (scikit-learn, L2, C = 100) refit on
the labels of each round: a converged model at every round, so the strategies never read a
half-trained model's noise — the condition the real rounds of ``label_next.py`` cannot meet
on two CPU cores at 5 seeds. What it leaves out is fine-tuning (FineSSL's rounds move the
features too); ``label_next.py --cold-start`` trains FineSSL on the first labels.

Datasets (all offline): ``fashion-mnist`` (pool: 10,000 training images; held-out: 2,000
other training images; test: 2,000 test images) and ``digits`` (scikit-learn's 1,797 8 x 8
digits upscaled: test 450, held-out 300, pool the other 1,047; the split is fixed).

* rounds: round 0 = ``--start`` labels per class drawn at random (per seed), then each
  strategy adds ``--budget`` per round for ``--rounds`` rounds;
* cold start: K first labels chosen by each feature strategy with no labels at all.

``--evaluate heldout`` measures on the held-out part of the *training* set — the only
measurement the default's constants were chosen on; ``test`` is for the published tables.

    .venv/bin/python benchmarks/label_next_probe.py --evaluate heldout --rounds 6 \\
        --strategies typiclust probcover margin balanced --section label-next-heldout
    .venv/bin/python benchmarks/label_next_probe.py --evaluate test --doc docs/results.md
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROUND_STRATEGIES = ("random", "entropy", "margin", "kcenter", "balanced", "typiclust", "probcover",
                    "auto")
COLD_STRATEGIES = ("random", "kcenter", "typiclust", "probcover", "auto")
# The probe's inverse regularisation, chosen in a one-off comparison on the held-out part of
# Fashion-MNIST's training set (3 seeds; 4 labels per class, 40 random labels, or both):
# C = 1 predicts the majority class of an unbalanced labeled set (41 % with 40 random labels),
# C = 10 / 100 / 1000 give 60 / 62 / 62 %; 100 it is. ``--probe-c`` reruns any table with
# another C.
PROBE_C = 100.0


def summarise(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 \
        else f"{values[0]:.2f}"


class Images:
    """``(PIL image, label)`` items of an array of 8-bit grey images."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray) -> None:
        self.pixels, self.targets = pixels, labels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int):
        from PIL import Image

        return Image.fromarray(self.pixels[index]).convert("RGB"), int(self.targets[index])


def datasets(root: str) -> dict[str, dict[str, tuple[object, np.ndarray]]]:
    """name -> part ("pool", "heldout", "test") -> (dataset, indices, labels)."""
    from sklearn.datasets import load_digits

    from finessl.config import load_preset
    from finessl.data.datasets import dataset_targets, load_source

    config = load_preset("demo")
    config.data.root = root
    source = load_source(config.data, 0)
    order = np.random.default_rng(1234).permutation(len(source.train))
    test = np.sort(np.random.default_rng(1235).permutation(len(source.test))[:2000])
    fashion = {"pool": (source.train, np.sort(order[:10000])),
               "heldout": (source.train, np.sort(order[10000:12000])), "test": (source.test, test)}
    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = Images(pixels, digits.target)
    order = np.random.default_rng(1236).permutation(len(images))
    small = {"test": (images, np.sort(order[:450])), "heldout": (images, np.sort(order[450:750])),
             "pool": (images, np.sort(order[750:]))}
    for parts in (fashion, small):
        for name, (dataset, indices) in parts.items():
            parts[name] = (dataset, indices, dataset_targets(dataset)[indices])
    return {"fashion-mnist": fashion, "digits": small}


def features(name: str, parts, cache: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """part -> (unit float16 features, labels), cached in ``cache``."""
    file = cache / f"features-{name}.npz"
    if file.is_file():
        saved = np.load(file)
        return {part: (saved[f"{part}_x"], saved[f"{part}_y"]) for part in parts}
    from finessl.audit.audit import encoder
    from finessl.audit.scan import scan
    from finessl.config import load_preset
    from finessl.data.augment import build_transforms

    config = load_preset("demo")
    encode, size, mean, std, device, _ = encoder(config, None, "cpu")
    transform = build_transforms(size, mean, std).test
    out = {}
    for part, (dataset, indices, labels) in parts.items():
        found = scan(encode, dataset, indices, transform, size, device, 256)
        assert len(found) == len(indices), found.failed
        out[part] = (found.features, labels)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(file, **{f"{p}_x": x for p, (x, _) in out.items()}, **{f"{p}_y": y for p, (_, y) in out.items()})
    return out


def probe(x: np.ndarray, y: np.ndarray, classes: int, c: float = PROBE_C):
    """A logistic-regression probe; ``predict(rows) -> [N, classes]`` probabilities (a class
    never labeled gets probability 0)."""
    from sklearn.linear_model import LogisticRegression

    seen = np.unique(y)
    if len(seen) == 1:
        def constant(rows):
            out = np.zeros((len(rows), classes))
            out[:, seen[0]] = 1.0
            return out
        return constant
    model = LogisticRegression(C=c, max_iter=3000).fit(np.asarray(x, np.float32), y)

    def predict(rows):
        out = np.zeros((len(rows), classes))
        out[:, model.classes_] = model.predict_proba(np.asarray(rows, np.float32))
        return out
    return predict


def accuracy(predict, x: np.ndarray, y: np.ndarray) -> float:
    return 100.0 * float((predict(x).argmax(axis=1) == y).mean())


def choose(strategy: str, pool_x, labeled, probs, budget: int, seed: int, classes: int) -> np.ndarray:
    """Pool positions the strategy picks among the images not yet labeled."""
    from finessl.active.strategies import STRATEGIES, Pool

    free = np.setdiff1d(np.arange(len(pool_x)), labeled)
    scores = Pool(None if probs is None else probs[free], pool_x[free],
                  pool_x[labeled] if len(labeled) else None, classes=classes)
    picks = STRATEGIES.get(strategy)(scores, budget, np.random.default_rng(seed))
    chosen = free[[p.index for p in picks]]
    assert len(set(chosen.tolist())) == budget
    return chosen


def rounds_row(data, strategy: str, seed: int, args, evaluate: str, classes: int) -> list[float]:
    pool_x, pool_y = data["pool"]
    eval_x, eval_y = data[evaluate]
    rng = np.random.default_rng(seed)
    labeled = np.concatenate([rng.choice(np.flatnonzero(pool_y == k), args.start, replace=False)
                              for k in range(classes)])
    results = []
    for round_ in range(args.rounds + 1):
        model = probe(pool_x[labeled], pool_y[labeled], classes, args.probe_c)
        results.append(accuracy(model, eval_x, eval_y))
        if round_ < args.rounds:
            picked = choose(strategy, pool_x, labeled, model(pool_x), args.budget, seed * 100 + round_,
                            classes)
            labeled = np.concatenate([labeled, picked])
    return results


def cold_row(data, strategy: str, seed: int, budgets: list[int], evaluate: str, classes: int,
             c: float = PROBE_C) -> list[float]:
    pool_x, pool_y = data["pool"]
    eval_x, eval_y = data[evaluate]
    out = []
    for budget in budgets:
        picked = choose(strategy, pool_x, np.zeros(0, np.int64), None, budget, seed, classes)
        out.append(accuracy(probe(pool_x[picked], pool_y[picked], classes, c), eval_x, eval_y))
    return out


def table_rows(results: dict[str, list[list[float]]], compare_from: int) -> list[str]:
    """One Markdown row per strategy: mean ± std per column over the seeds, and from column
    ``compare_from`` on the mean gain over random and on how many seeds it is ahead."""
    lines = []
    for strategy, rows in results.items():
        cells = []
        for c in range(len(rows[0])):
            cell = summarise([row[c] for row in rows])
            if "random" in results and strategy != "random" and c >= compare_from:
                wins = sum(a[c] > b[c] for a, b in zip(rows, results["random"]))
                gap = statistics.mean(a[c] - b[c] for a, b in zip(rows, results["random"]))
                cell += f" ({gap:+.2f}, {wins}/{len(rows)})"
            cells.append(cell)
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "digits"])
    parser.add_argument("--strategies", nargs="+", default=list(ROUND_STRATEGIES))
    parser.add_argument("--cold-strategies", nargs="+", default=list(COLD_STRATEGIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--start", type=int, default=4, help="labels per class at round 0")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget", type=int, default=40, help="labels added per round")
    parser.add_argument("--cold-start", nargs="*", type=int, default=[10, 20, 40])
    parser.add_argument("--evaluate", choices=("heldout", "test"), default="test")
    parser.add_argument("--probe-c", type=float, default=PROBE_C, help="the probe's inverse regularisation")
    parser.add_argument("--root", default="data")
    parser.add_argument("--runs", default="runs/label-next-probe")
    parser.add_argument("--doc")
    parser.add_argument("--section", default="label-next-probe")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(Path(__file__).parent))
    from harness import write_section

    began = time.time()
    parts = datasets(args.root)
    lines = [f"Command: `python benchmarks/label_next_probe.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {platform.machine()}, Python {platform.python_version()}, CPU; measured on "
             f"the {'held-out part of the training set' if args.evaluate == 'heldout' else 'test set'}; "
             f"seeds {' '.join(map(str, args.seeds))}; top-1 % of a linear probe on frozen "
             f"EfficientNet-Lite0 features (logistic regression, C = {args.probe_c:g}), "
             "mean ± std over the seeds; "
             "in brackets the mean gain over random and on how many seeds the strategy is ahead "
             "of it.", ""]
    for name in args.datasets:
        data = features(name, parts[name], Path(args.runs))
        classes = int(data["pool"][1].max()) + 1
        per = {s: [rounds_row(data, s, seed, args, args.evaluate, classes) for seed in args.seeds]
               for s in args.strategies}
        lines += [f"**{name}**, rounds: {args.start} labels per class at round 0, "
                  f"+{args.budget} per round.", "",
                  "| strategy | " + " | ".join(f"round {r}" for r in range(args.rounds + 1)) + " |",
                  "|---|" + "---:|" * (args.rounds + 1)]
        lines += table_rows(per, compare_from=1) + [""]
        if args.cold_start:
            cold = {s: [cold_row(data, s, seed, args.cold_start, args.evaluate, classes, args.probe_c)
                        for seed in args.seeds] for s in args.cold_strategies}
            lines += [f"**{name}**, cold start: K first labels, nothing labeled before.", "",
                      "| first labels by | " + " | ".join(f"K = {k}" for k in args.cold_start) + " |",
                      "|---|" + "---:|" * len(args.cold_start)]
            lines += table_rows(cold, compare_from=0) + [""]
    lines.append(f"Wall time {(time.time() - began) / 60:.1f} min (features cached in {args.runs}).")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.doc:
        write_section(Path(args.doc), args.section, text)


if __name__ == "__main__":
    main()
