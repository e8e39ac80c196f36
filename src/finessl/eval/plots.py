"""The report's figures (matplotlib, written as PNG). Each stays readable at 1,000 classes:
nothing is drawn per class with a colour or a tick label beyond ``MAX_LABELS``."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from finessl.eval.summary import RunSummary, confusion_counts
from finessl.rundir import atomic_write

MAX_LABELS = 30  # class names as tick labels up to this many classes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # class names such as "$x$" stay text
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    """Renders to memory, then writes atomically (a link at ``out`` is replaced, not followed)."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, dpi=100, format="png")
    _pyplot().close(fig)
    atomic_write(out, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return out


def plot_training(runs: list[RunSummary], out: Path) -> Path | None:
    """Over training: test accuracy, loss terms, mask rate and pseudo-label accuracy, margin
    spread, mean main vs auxiliary confidence (the two biases FineSSL is about), lr."""
    if not any(r.records for r in runs):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    compare = len(runs) > 1
    for run in runs:
        label = f"{run.name}: " if compare else ""
        steps, top1 = run.series("eval", "top1")
        axes[0, 0].plot(steps, top1, marker="o", ms=3, label=f"{label}top-1")
        steps, estimated = run.series("eval", "estimated_top1")
        if estimated:
            axes[0, 0].plot(steps, estimated, ls="--", marker="^", ms=3,
                            label=f"{label}estimated top-1 (no labels)")
        if not compare:
            axes[0, 0].plot(*run.series("eval", "balanced_acc"), marker="s", ms=3, label="balanced")
        for key in [k for k in run.keys("train") if k.startswith(("loss", "kd"))]:
            if compare and key != "loss":
                continue
            axes[0, 1].plot(*run.series("train", key), label=f"{label}{key}")
        for key in ("mask", "pl_acc", "pl_acc_selected", "weight"):
            if compare and key not in ("mask", "pl_acc"):
                continue
            steps, values = run.series("train", key)
            if values:
                axes[0, 2].plot(steps, values, label=f"{label}{key}")
        steps, margin = run.series("train", "margin_max")
        if margin:
            axes[1, 0].plot(steps, margin, label=f"{label}largest margin")
        spread = [(r["step"], max(r["margins"]) - min(r["margins"])) for r in run.pseudo_labels
                  if r.get("margins")]
        if spread:
            axes[1, 0].plot(*zip(*spread), marker="o", ms=3, label=f"{label}spread at eval")
        for key, name in (("conf", "main"), ("aux_conf", "auxiliary")):
            steps, values = run.series("train", key)
            if values:
                axes[1, 1].plot(steps, values, label=f"{label}{name} confidence")
        axes[1, 2].plot(*run.series("train", "lr"), label=f"{label}lr" if compare else "lr")
    titles = [["Test accuracy (%)", "Loss terms", "Unlabeled: mask rate, pseudo-label accuracy"],
              ["Balanced margin (logits)", "Mean confidence on the weak view", "Learning rate"]]
    for i in range(2):
        for j in range(3):
            ax = axes[i, j]
            ax.set(title=titles[i][j], xlabel="step")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "not logged by this run", ha="center", va="center",
                        transform=ax.transAxes, color="gray")
    return _save(fig, out)


def plot_pseudo_labels(run: RunSummary, out: Path) -> Path | None:
    """Sorted per-class counts of selected pseudo-labels against the balanced share, and the
    imbalance ratio (most / fewest selected) at every evaluation."""
    rows = [r for r in run.pseudo_labels if r.get("pl_counts") and sum(r["pl_counts"]) > 0]
    if not rows:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    counts = sorted(rows[-1]["pl_counts"], reverse=True)
    balanced = sum(counts) / len(counts)
    left.bar(range(len(counts)), counts, width=1.0, color="tab:blue")
    left.axhline(balanced, color="black", lw=1, ls="--", label=f"balanced share ({balanced:.0f})")
    left.set(title=f"Selected pseudo-labels per class, sorted (step {rows[-1]['step']})",
             xlabel="classes, most to fewest selected", ylabel="count")
    left.legend()
    ratios = [(r["step"], max(r["pl_counts"]) / max(1, min(r["pl_counts"]))) for r in rows]
    right.plot(*zip(*ratios), marker="o")
    right.set(title="Imbalance ratio (most / fewest, fewest >= 1)", xlabel="step", yscale="log")
    right.grid(alpha=0.3, which="both")
    return _save(fig, out)


def reliability_bins(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15):
    confidence, preds = logits.float().softmax(-1).max(-1)
    correct = (preds == labels).float()
    index = torch.clamp((confidence * bins).long(), max=bins - 1)
    sizes = torch.bincount(index, minlength=bins)
    accuracy = torch.bincount(index, weights=correct, minlength=bins) / sizes.clamp(min=1)
    mean_conf = torch.bincount(index, weights=confidence, minlength=bins) / sizes.clamp(min=1)
    ece = float((sizes / sizes.sum() * (accuracy - mean_conf).abs()).sum())
    return sizes, accuracy, mean_conf, ece


def plot_reliability(logits: torch.Tensor, labels: torch.Tensor, ece: float, out: Path,
                     bins: int = 15) -> Path:
    plt = _pyplot()
    sizes, accuracy, mean_conf, _ = reliability_bins(logits, labels, bins)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    centers = (torch.arange(bins) + 0.5) / bins
    top.bar(centers, accuracy, width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    used = sizes > 0
    top.scatter(mean_conf[used], accuracy[used], color="red", s=12, zorder=3, label="mean confidence")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"Reliability diagram, ECE {ece:.4f}")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centers, sizes, width=1 / bins, edgecolor="black", color="gray")
    for x, n in zip(centers.tolist(), sizes.tolist()):
        if n:
            bottom.text(x, n, str(n), ha="center", va="bottom", fontsize=6)
    bottom.set(xlabel="confidence", ylabel="test images")
    return _save(fig, out)


def plot_confusion(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], out: Path) -> Path | None:
    """Row-normalised confusion matrix, for up to ``MAX_LABELS`` classes (beyond that the
    per-class table's most-confused-with column says more)."""
    if len(classes) > MAX_LABELS:
        return None
    plt = _pyplot()
    counts = confusion_counts(logits, labels, len(classes)).float()
    matrix = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    size = min(12, 3 + 0.35 * len(classes))
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, out)


def plot_sorted_accuracy(runs: list[RunSummary], out: Path) -> Path | None:
    """Per-class test accuracy sorted from best to worst (one line per run)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    drawn = False
    for run in runs:
        values = sorted((r.accuracy for r in run.rows if r.accuracy is not None), reverse=True)
        if values:
            ax.plot(range(len(values)), values, marker="." if len(values) < 50 else None, label=run.name)
            drawn = True
    if not drawn:
        _pyplot().close(fig)
        return None
    ax.set(title="Per-class test accuracy, sorted", xlabel="classes, best to worst", ylabel="%",
           ylim=(0, 101))
    ax.grid(alpha=0.3)
    if len(runs) > 1:
        ax.legend()
    return _save(fig, out)


def plot_deltas(names: list[str], deltas: list[float], title: str, out: Path) -> Path:
    """Per-class accuracy differences between two runs, sorted."""
    plt = _pyplot()
    order = sorted(range(len(deltas)), key=lambda i: deltas[i])
    fig, ax = plt.subplots(figsize=(max(7, min(16, 0.25 * len(deltas))), 4))
    values = [deltas[i] for i in order]
    ax.bar(range(len(values)), values, width=1.0,
           color=["tab:red" if v < 0 else "tab:green" for v in values])
    if len(deltas) <= MAX_LABELS:
        ax.set_xticks(range(len(values)), [names[i] for i in order], rotation=90, fontsize=7)
    else:
        ax.set_xlabel("classes, sorted by difference")
    ax.axhline(0, color="black", lw=0.8)
    ax.set(title=title, ylabel="percentage points")
    limit = max(1.0, max(abs(v) for v in values) if values else 1.0)
    ax.set_ylim(-math.ceil(limit * 1.1), math.ceil(limit * 1.1))
    return _save(fig, out)
