"""What a report shows about one run, computed from its files (no model is loaded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from finessl.rundir import RunDir


@dataclass
class ClassRow:
    """One class: test accuracy, support, pseudo-labels, margin, most confused with."""

    name: str
    accuracy: float | None
    support: int
    pl_count: int | None = None
    pl_accuracy: float | None = None
    margin: float | None = None
    confused_with: str = ""
    confused_share: float = 0.0


@dataclass
class RunSummary:
    name: str
    path: Path
    context: dict
    final: dict
    classes: list[str]
    records: list[dict]
    config_text: str = ""
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    rows: list[ClassRow] = field(default_factory=list)
    cross_fit: dict | None = None  # finessl estimate --cross-fit's result, where it ran

    def series(self, kind: str, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of ``key`` in the ``kind`` lines of metrics.jsonl."""
        points = [(r["step"], r[key]) for r in self.records
                  if r.get("kind") == kind and isinstance(r.get(key), (int, float))]
        return [p[0] for p in points], [float(p[1]) for p in points]

    def keys(self, kind: str) -> list[str]:
        found: dict[str, None] = {}
        for record in self.records:
            if record.get("kind") == kind:
                found.update(dict.fromkeys(k for k, v in record.items() if isinstance(v, (int, float))))
        return list(found)

    @property
    def pseudo_labels(self) -> list[dict]:
        return [r for r in self.records if r.get("kind") == "pseudo_labels"]


def confusion_counts(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[true, predicted]`` counts."""
    preds = logits.argmax(dim=-1)
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def class_rows(summary: RunSummary) -> list[ClassRow]:
    classes = summary.classes
    per_class = summary.final.get("per_class_acc") or {}
    accuracy = list(per_class.values()) if isinstance(per_class, dict) else list(per_class)
    accuracy += [None] * (len(classes) - len(accuracy))
    rows = [ClassRow(name, acc, 0) for name, acc in zip(classes, accuracy)]
    if summary.logits is not None and summary.logits.shape[1] == len(classes):
        counts = confusion_counts(summary.logits, summary.labels, len(classes))
        for k, row in enumerate(rows):
            row.support = int(counts[k].sum())
            if row.support:
                row.accuracy = 100.0 * counts[k, k].item() / row.support
                off = counts[k].clone()
                off[k] = -1
                other = int(off.argmax())
                if off[other] > 0:
                    row.confused_with = classes[other]
                    row.confused_share = 100.0 * off[other].item() / row.support
    latest = summary.pseudo_labels[-1] if summary.pseudo_labels else {}
    for key, attribute in (("pl_counts", "pl_count"), ("pl_class_acc", "pl_accuracy"),
                           ("margins", "margin")):
        values = latest.get(key)
        if isinstance(values, list) and len(values) == len(rows):
            for row, value in zip(rows, values):
                setattr(row, attribute, value)
    return rows


def latest_state(records: list[dict]) -> dict:
    """A run without final.json (interrupted, or still training): its last evaluation and
    what it logged at its start stand in for the final numbers."""
    state: dict = {}
    for record in records:
        if record.get("kind") == "run":
            state.update({k: v for k, v in record.items() if k.startswith("num_")})
        elif record.get("kind") == "eval":
            state.update({k: v for k, v in record.items() if k not in ("kind", "epoch")})
        elif record.get("kind") == "train":
            state["steps"] = record["step"]
    if "step" in state:
        state["steps"] = max(state.pop("step"), state.get("steps", 0))
    return state


def summarise_run(path: str | Path) -> RunSummary:
    """Reads everything a report needs, checking each file (damaged ones are errors)."""
    run = RunDir(path)
    records = run.read_metrics()
    finished = (run / RunDir.FINAL).is_file()
    final = run.read_final() if finished else latest_state(records)
    metadata = run.read_adapter_metadata() if (run / RunDir.ADAPTER).is_file() else {}
    logits = labels = None
    if (run / RunDir.PREDICTIONS).is_file():
        logits, labels = run.load_predictions()
    config_text = (run / RunDir.CONFIG).read_text(errors="replace") if (run / RunDir.CONFIG).is_file() else ""
    classes = metadata.get("classes") or (list(final["per_class_acc"])
                                          if isinstance(final.get("per_class_acc"), dict) else [])
    if not classes and logits is not None:
        classes = [str(k) for k in range(logits.shape[1])]
    if logits is not None and logits.shape[1] != len(classes):
        raise run.damaged(f"{RunDir.PREDICTIONS} has {logits.shape[1]} classes, the run "
                          f"{len(classes)}")
    config = run.read_config() if config_text else None
    context = {
        "status": "finished" if finished else
        f"not finished: numbers of the last evaluation (step {final.get('steps', '?')})",
        "backbone": metadata.get("backbone", config.model.backbone if config else "?"),
        "pretrained": metadata.get("pretrained", config.model.pretrained if config else "?"),
        "PEFT": metadata.get("peft", config.model.peft if config else "?"),
        "algorithm": final.get("algorithm", config.algorithm.name if config else "?"),
        "dataset": config.data.name if config else "?",
        "labels per class": config.data.labels_per_class if config else "?",
        "classes": final.get("num_classes", len(classes)),
        "labeled / unlabeled / test": f"{final.get('num_labeled', '?')} / "
                                      f"{final.get('num_unlabeled', '?')} / {final.get('num_test', '?')}",
        "steps": final.get("steps", "?"),
    }
    summary = RunSummary(run.path.name or str(run.path), run.path, context, final, classes, records,
                         config_text, logits, labels)
    summary.rows = class_rows(summary)
    summary.cross_fit = run.read_cross_fit()
    return summary
