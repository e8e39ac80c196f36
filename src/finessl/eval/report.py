"""A readable report of a run: PNG plots and one self-contained HTML page.

Plots: accuracy over training; the class distribution of selected pseudo-labels per
evaluation (FineSSL's "aggregated bias" picture); a reliability diagram (15 bins); the
confusion matrix; per-class accuracy. The HTML page embeds the PNGs, the final numbers
and the resolved configuration, so it can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import torch

from finessl.rundir import RunDir


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # class names such as "$x$" stay text
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(records, out: Path) -> Path | None:
    evals = [r for r in records if r.get("kind") == "eval"]
    if not evals:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r["step"] for r in evals]
    ax.plot(steps, [r["top1"] for r in evals], marker="o", label="top-1")
    ax.plot(steps, [r["balanced_acc"] for r in evals], marker="s", label="balanced accuracy")
    ax.set(xlabel="step", ylabel="test accuracy (%)", title="Accuracy over training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_pseudo_labels(records, classes: list[str], out: Path) -> Path | None:
    rows = [r for r in records if r.get("kind") == "pseudo_labels" and sum(r["pl_counts"]) > 0]
    if not rows:
        return None
    plt = _figure()
    counts = torch.tensor([r["pl_counts"] for r in rows], dtype=torch.float)
    shares = 100 * counts / counts.sum(dim=1, keepdim=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = torch.zeros(len(rows))
    labels = [f"step {r['step']}" for r in rows]
    for k in range(shares.shape[1]):
        ax.bar(labels, shares[:, k], bottom=bottom, label=classes[k] if len(classes) <= 20 else None)
        bottom += shares[:, k]
    ax.axhline(100 / shares.shape[1], color="black", lw=0.5)
    ax.set(ylabel="share of selected pseudo-labels (%)",
           title="Pseudo-label class distribution (balanced = equal bands)")
    if len(classes) <= 20:
        ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_reliability(logits: torch.Tensor, labels: torch.Tensor, out: Path, bins: int = 15) -> Path:
    plt = _figure()
    confidence, preds = logits.softmax(-1).max(-1)
    correct = (preds == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    index = torch.bucketize(confidence, edges[1:-1], right=True)
    accuracy, mean_conf, sizes = [], [], []
    for b in range(bins):
        inside = index == b
        sizes.append(int(inside.sum()))
        accuracy.append(correct[inside].mean().item() if inside.any() else 0.0)
        mean_conf.append(confidence[inside].mean().item() if inside.any() else 0.0)
    fig, ax = plt.subplots(figsize=(5, 5))
    centers = ((edges[:-1] + edges[1:]) / 2).tolist()
    ax.bar(centers, accuracy, width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.scatter([c for c, n in zip(mean_conf, sizes) if n], [a for a, n in zip(accuracy, sizes) if n],
               color="red", s=12, zorder=3, label="mean confidence")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
           title="Reliability diagram (test set)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_confusion(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], out: Path) -> Path:
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    plt = _figure()
    matrix = multiclass_confusion_matrix(logits.argmax(-1), labels, len(classes), normalize="true")
    size = min(12, 3 + 0.35 * len(classes))
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix.numpy(), cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_per_class(per_class: list, classes: list[str], out: Path) -> Path:
    plt = _figure()
    values = [v if v is not None else 0.0 for v in per_class]
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(classes)), 4))
    ax.bar(range(len(values)), values)
    if len(classes) <= 40:
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100), title="Per-class accuracy")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_report(run_dir: str | Path) -> Path:
    """Writes ``run_dir/report/*.png`` and ``run_dir/report/index.html``; returns the page."""
    run = RunDir(run_dir)
    run_dir = run.path
    records = run.read_metrics()
    final = run.read_final() if (run / RunDir.FINAL).is_file() else {}
    classes = run.load_adapter()[1]["classes"] if (run / RunDir.ADAPTER).is_file() else []
    predictions = run / RunDir.PREDICTIONS
    loaded = run.load_predictions() if predictions.is_file() else None  # read all before writing
    out = run_dir / RunDir.REPORT
    out.mkdir(exist_ok=True)

    plots: list[tuple[str, Path | None]] = [
        ("Accuracy over training", plot_accuracy(records, out / "accuracy.png")),
        ("Pseudo-label class distribution", plot_pseudo_labels(
            records, classes or [str(k) for k in range(1000)], out / "pseudo_labels.png")),
    ]
    if loaded is not None:
        logits, labels = loaded
        classes = classes or [str(k) for k in range(logits.shape[1])]
        plots += [("Reliability diagram", plot_reliability(logits, labels, out / "reliability.png")),
                  ("Confusion matrix", plot_confusion(logits, labels, classes, out / "confusion.png"))]
    per_class = final.get("per_class_acc")
    if isinstance(per_class, dict):
        classes, per_class = list(per_class), list(per_class.values())
    if per_class:
        plots.append(("Per-class accuracy", plot_per_class(per_class, classes, out / "per_class.png")))
    page = out / "index.html"
    page.write_text(_html(run_dir, final, [(t, p) for t, p in plots if p is not None]))
    return page


def _html(run_dir: Path, final: dict, plots: list[tuple[str, Path]]) -> str:
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    shown = {k: final[k] for k in ("top1", "top5", "balanced_acc", "ece", "nll", "steps",
                                   "seconds", "trainable_params", "algorithm") if k in final}
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in shown.items())
    figures = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{html.escape(title)}'
        f"</figcaption></figure>" for title, path in plots)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>finessl report: {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
figure{{display:inline-block;margin:1em;vertical-align:top}}img{{max-width:520px}}
table{{border-collapse:collapse}}th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}
pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head>
<body><h1>finessl run: {html.escape(str(run_dir))}</h1>
<h2>Final numbers</h2><table>{rows}</table>
<h2>Plots</h2>{figures}
<h2>Configuration</h2><pre>{html.escape(config)}</pre>
<script>
// Marks the page once every plot has decoded, so a headless browser can check it.
window.addEventListener("load", () => {{
  const images = Array.from(document.images);
  const ok = images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);
  document.body.dataset.plotsLoaded = ok ? images.length : "failed";
}});
</script>
</body></html>
"""


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
