"""Why FineSSL collapses on few classes: controlled ablations on a fast testbed.

Fashion-MNIST class subsets as 14x14 pixel vectors (average-pooled), a two-layer MLP as
the backbone (full fine-tuning), additive-noise + dropout augmentation (weak: sigma 0.05;
strong: sigma 0.3, 20 % of the pixels zeroed), 4 labels per class, 2,000 unlabeled images
(optionally long-tailed), 500 test images per class, 600 steps of batch 16 in three epochs.
Seconds per run, so every part of the method can be switched off over several seeds.

    .venv/bin/python benchmarks/few_class_ablation.py --out docs/few-class-ablation.md \\
        --trace docs/few-class-trace.png

Variants: the reference rule; without the per-epoch reset of the pace; without margins;
margins on the unlabeled loss only; gamma 1; thresholded weights instead of the auxiliary
confidence of every sample; a smaller margin scale (alpha 2); the smoothed pace alone;
weights above chance alone; the default (both); FixMatch; supervised. A run "collapses"
when a class's test accuracy is below 5 %.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

import finessl
from finessl.algorithms.components import ClassPace
from finessl.config import DataConfig, apply_overrides, load_preset
from finessl.data.augment import Transforms
from finessl.data.datasets import load_source

REFERENCE = {"algorithm.pace": "reference", "algorithm.aux_weight": "confidence"}
VARIANTS = {
    "FineSSL, reference rule": ("finessl", REFERENCE),
    "  without the per-epoch pace reset": ("finessl", {**REFERENCE, "no_reset": True}),
    "  without margins (bms false)": ("finessl", {**REFERENCE, "algorithm.bms": "false"}),
    "  margins on the unlabeled loss only": ("finessl", {**REFERENCE, "algorithm.bms_labeled": "false"}),
    "  gamma 1 instead of 3": ("finessl", {**REFERENCE, "algorithm.unlabeled_weight": "1"}),
    "  thresholded weights instead of c' of all": ("finessl", {**REFERENCE,
                                                              "algorithm.weighting": "algorithm"}),
    "  margin scale alpha 2 instead of 8": ("finessl", {**REFERENCE, "algorithm.margin_alpha": "2"}),
    "  smoothed pace only": ("finessl", {"algorithm.pace": "smoothed",
                                         "algorithm.aux_weight": "confidence"}),
    "  weights above chance only": ("finessl", {"algorithm.pace": "reference",
                                                "algorithm.aux_weight": "above_chance"}),
    "FineSSL, default (auto: both)": ("finessl", {}),
    "FixMatch": ("fixmatch", {}),
    "supervised": ("supervised", {}),
}
TASKS = {"T-shirt vs shirt": ([0, 6], 1.0), "T-shirt vs shirt, unlabeled 4:1": ([0, 6], 4.0),
         "sandal vs sneaker": ([5, 7], 1.0), "pullover / coat / shirt": ([2, 4, 6], 1.0)}


class Pairs(TensorDataset):
    def __getitem__(self, index):
        sample, label = super().__getitem__(index)
        return sample, int(label)


def pixels(root: str):
    source = load_source(DataConfig(name="fashion-mnist", root=root), 0)
    pool = lambda data: torch.nn.functional.avg_pool2d(data.float().div(255).unsqueeze(1), 2).flatten(1)  # noqa: E731
    return pool(source.train.data), source.train.targets, pool(source.test.data), source.test.targets, \
        source.classes


def task_source(data, classes: list[int], ratio: float, seed: int, unlabeled: int = 2000):
    x_train, y_train, x_test, y_test, names = data
    rng = np.random.default_rng(100 + seed)
    train, test = [], []
    for k, c in enumerate(classes):
        pool = rng.permutation(np.flatnonzero(y_train.numpy() == c))
        n = int(unlabeled / len(classes) * ratio ** (-k / max(1, len(classes) - 1)))
        train.append(pool[: n + 4])
        test.append(np.flatnonzero(y_test.numpy() == c)[:500])
    train, test = np.concatenate(train), np.concatenate(test)
    remap = {c: k for k, c in enumerate(classes)}
    train_y = torch.tensor([remap[int(v)] for v in y_train[train]])
    test_y = torch.tensor([remap[int(v)] for v in y_test[test]])
    return finessl.SourceData([names[c] for c in classes], Pairs(x_train[train], train_y),
                              train_y.numpy(), Pairs(x_test[test], test_y))


def noise(sigma: float, drop: float):
    return lambda v: (v + sigma * torch.randn_like(v)) * (torch.rand_like(v) >= drop)


def run(data, classes, ratio, algorithm, overrides, seed, steps=600):
    overrides = dict(overrides)
    no_reset = overrides.pop("no_reset", False)
    original = ClassPace.reset
    if no_reset:
        ClassPace.reset = lambda self: None
    try:
        config = apply_overrides(load_preset("smoke"), {
            "model.peft": "full", "data.labels_per_class": "4", "algorithm.name": algorithm,
            "seed": str(seed), "train.steps": str(steps), "train.steps_per_epoch": str(steps // 3),
            "train.batch_size": "16", "train.tensorboard": "false", "train.log_every": "10",
            "train.eval_every": str(steps // 6), **overrides})
        torch.manual_seed(seed)
        backbone = nn.Sequential(nn.Linear(196, 128), nn.ReLU(), nn.Linear(128, 64))
        transforms = Transforms(weak=noise(0.05, 0.0), strong=noise(0.3, 0.2), test=lambda v: v)
        with tempfile.TemporaryDirectory() as out:
            final = finessl.train(config, f"{out}/run", backbone=backbone, callbacks=[],
                                  source=task_source(data, classes, ratio, seed), transforms=transforms)
            records = [json.loads(line) for line in open(f"{out}/run/metrics.jsonl")]
    finally:
        ClassPace.reset = original
    return final, records


def plot_trace(data, path: str) -> None:
    """Margins and the predicted share of one class over training, reference vs default."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for label, overrides in (("reference rule", REFERENCE), ("default (auto)", {})):
        _, records = run(data, [0, 6], 1.0, "finessl", overrides, seed=0)
        train = [r for r in records if r["kind"] == "train"]
        axes[0].plot([r["step"] for r in train], [r.get("margin_max", 0) for r in train], label=label)
        evals = [r for r in records if r["kind"] == "eval"]
        axes[1].plot([r["step"] for r in evals], [min(r["per_class_acc"]) for r in evals],
                     marker="o", label=label)
    axes[0].set(title="Largest balanced margin (logits), T-shirt vs shirt, seed 0", xlabel="step")
    axes[1].set(title="Worst class's test accuracy (%)", xlabel="step", ylim=(-2, 100))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--root", default="data")
    parser.add_argument("--out", help="write the markdown table here")
    parser.add_argument("--trace", help="write the margin / worst-class figure here")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS),
                        help="run only these tasks")
    parser.add_argument("--variants", nargs="+", type=int, metavar="ROW",
                        help="run only these rows of the table (0 = the reference rule)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    data = pixels(args.root)
    tasks = {name: TASKS[name] for name in args.tasks}
    rows = [row for k, row in enumerate(VARIANTS.items()) if args.variants is None or k in args.variants]
    header = "| variant | " + " | ".join(tasks) + " |"
    lines = [header, "|---|" + "---:|" * len(tasks)]
    for name, (algorithm, overrides) in rows:
        cells = []
        for classes, ratio in tasks.values():
            finals = [run(data, classes, ratio, algorithm, overrides, seed)[0] for seed in args.seeds]
            tops = [f["top1"] for f in finals]
            collapsed = sum(min(f["per_class_acc"].values()) < 5 for f in finals)
            cells.append(f"{statistics.mean(tops):.1f} ({collapsed}/{len(finals)})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    text = ("Top-1 % (mean of seeds " + ", ".join(map(str, args.seeds)) + "; in brackets: runs "
            "that collapsed, a class below 5 %).\n\n" + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    if args.trace:
        plot_trace(data, args.trace)


if __name__ == "__main__":
    main()
