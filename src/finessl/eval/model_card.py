"""A model card for every run: ``README.md`` in the run directory, in Hugging Face's format.

YAML front matter (``library_name``, ``tags``, ``base_model`` where the backbone is a Hub
id, ``datasets``, ``metrics``, ``pipeline_tag``), then what was trained, the results, the
pseudo-labels, the audit's findings and the label-free accuracy estimate where the run has
them, intended use and limits, and the command that reproduces the run. Written when a run
finishes (and again by ``finessl report``), from the run's files alone.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

from finessl.eval.summary import RunSummary, summarise_run
from finessl.rundir import RunDir, atomic_write


def _number(value, unit: str = " %") -> str:
    return f"{value:.2f}{unit}" if isinstance(value, (int, float)) else "n/a"


def front_matter(summary: RunSummary) -> dict:
    context = summary.context
    meta: dict = {"library_name": "finessl", "pipeline_tag": "image-classification",
                  "tags": ["finessl", "semi-supervised", "image-classification",
                           f"peft-{context['PEFT']}", f"algorithm-{context['algorithm']}"],
                  "datasets": [str(context["dataset"])], "metrics": ["accuracy"]}
    backbone = str(context["backbone"])
    hub = backbone.removeprefix("hf-hub:")
    if "/" in hub and not hub.startswith(("/", ".")):  # a Hub repository id
        meta["base_model"] = hub
    return meta


def _results(summary: RunSummary) -> list[str]:
    final = summary.final
    lines = ["## Results", ""]
    if final.get("num_test"):
        worst = min(summary.rows, key=lambda r: r.accuracy if r.accuracy is not None else 101.0,
                    default=None)
        lines += [f"On {final['num_test']} test images:", "",
                  "| top-1 | balanced accuracy | ECE | worst class |", "|---:|---:|---:|---|",
                  f"| {_number(final.get('top1'))} | {_number(final.get('balanced_acc'))} | "
                  f"{_number(final.get('ece'), '')} | "
                  + (f"{worst.name} ({_number(worst.accuracy)})" if worst else "n/a") + " |", ""]
    else:
        lines += ["No labeled test set: the accuracy below is estimated without labels.", ""]
    if final.get("estimated_top1") is not None:
        low, high = (final.get("estimated_top1_interval") or [None, None])[:2]
        lines += [f"Label-free estimate ({final.get('estimate_method', '?')}, on "
                  f"{final.get('estimate_pool', '?')} pool images): {_number(final['estimated_top1'])}"
                  + (f" (interval {_number(low)} to {_number(high)})" if low is not None else ""), ""]
        lines += [f"* {warning}" for warning in final.get("estimate_warnings", [])]
        lines += [""] if final.get("estimate_warnings") else []
    return lines


def _pseudo_labels(summary: RunSummary) -> list[str]:
    if not summary.pseudo_labels:
        return []
    last = summary.pseudo_labels[-1]
    counts = last.get("pl_counts") or []
    line = (f"At step {last.get('step', '?')}: {sum(counts)} unlabeled images confidently "
            f"pseudo-labeled, mean confidence {_number(last.get('mean_conf'), '')}")
    if last.get("pl_acc") is not None:
        line += f", {_number(last['pl_acc'])} of them correct"
    return ["## Pseudo-labels", "", line + ".", ""]


def _audit(run: RunDir) -> list[str]:
    found = run / RunDir.AUDIT / RunDir.AUDIT_SUMMARY
    if not found.is_file():
        return []
    try:
        audit = json.loads(found.read_text())
    except (OSError, ValueError):
        return ["## Data audit", "", f"{found} could not be read.", ""]
    return ["## Data audit", "",
            f"* out-of-distribution share of the pool: {_number(100 * audit.get('ood_fraction', 0))}",
            f"* near-duplicate groups: {_groups(audit)}; test-set copies in "
            f"training: {len(audit.get('test_leaks', []))}",
            f"* seed labels that look wrong: {len(audit.get('label_suspects', []))}", ""]


def model_card(path: str | Path, command: str | None = None) -> str:
    """The card's text for the run at ``path``."""
    summary = summarise_run(path)
    run = RunDir(path)
    context = summary.context
    reproduce = command or (f"finessl train --config {shlex.quote(str(run / RunDir.CONFIG))} "
                            "--output NEW_RUN")
    lines = ["---", yaml.safe_dump(front_matter(summary), sort_keys=False).strip(), "---", "",
             f"# {summary.name}", "",
             f"{context['algorithm']} semi-supervised fine-tuning of {context['backbone']} "
             f"({context['pretrained']} weights) with {context['PEFT']}, by finessl.", "",
             "## What was trained", "",
             "| | |", "|---|---|",
             *[f"| {key} | {value} |" for key, value in context.items()],
             f"| class names | {', '.join(summary.classes[:50])}"
             + (" ..." if len(summary.classes) > 50 else "") + " |", "",
             *_results(summary), *_pseudo_labels(summary), *_audit(run),
             "## Intended use and limits", "",
             f"Classifies images into the {len(summary.classes)} classes above, for data like the "
             "training pool. Accuracy on other data is not measured: check it there (or run "
             "`finessl estimate` on it) before relying on it.", "",
             "## Use and reproduce", "",
             "```", f"finessl predict --run {shlex.quote(str(run.path))} IMAGES... --out predictions.csv",
             reproduce, "```", ""]
    return "\n".join(lines)


def write_model_card(path: str | Path, command: str | None = None) -> Path | None:
    """Writes (or rewrites) ``README.md`` in the run directory; a README.md that is not a
    finessl card (the user's own) is left as it is (None)."""
    target = Path(path) / RunDir.CARD
    if target.is_file() and "library_name: finessl" not in target.read_text(errors="replace")[:2000]:
        return None
    text = model_card(path, command)
    atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return target


def _groups(audit: dict) -> int:
    """The audit's duplicate-group count (audit.json lists the first groups only)."""
    return int(audit.get("duplicate_groups", len(audit.get("duplicates", []))))
