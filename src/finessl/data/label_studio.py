"""Label Studio round trip: tasks with the model's prediction out, exported annotations in.

Out: ``finessl suggest/label --format label-studio`` writes a list of tasks in Label
Studio's JSON import format — ``data.image`` an image reference, ``predictions`` the
model's class as a ``choices`` result with its ``score`` and ``model_version`` (the run),
so an annotator confirms or corrects — and, beside it, the labeling configuration of an
image-classification project with the run's class names (``tasks.label_config.xml``).

Images are referenced the way Label Studio serves local files: ``/data/local-files/?d=``
plus the path relative to its ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``
(``data.label_studio_root``, default ``/``); ``data.label_studio_url`` replaces that prefix
(an HTTP server of the same folder, say). A reference read back is mapped to a file the
same way; a plain file path in the task's data is used as it is.

In: ``data.extra_labels`` reads Label Studio's three exports of such a project — JSON (every
task with its ``annotations``), JSON-MIN and CSV (one record per annotation, the choice
under the control tag's name). Skipped (cancelled) annotations and tasks without one are
ignored; when annotators disagree, ``data.label_studio_conflicts`` decides: ``majority``
(the most frequent label; a tie is left out) or ``reject`` (any disagreement is left out).
Every left-out task is counted in a warning.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote
from xml.sax.saxutils import quoteattr

from finessl.errors import DataError, shown
from finessl.options import EVERY_METHOD, method_options, opt

log = logging.getLogger(__name__)

LOCAL_FILES = "/data/local-files/?d="
IMAGE_KEY, CONTROL, OBJECT = "image", "label", "image"  # $image, <Choices name="label" toName="image">
CONFLICTS = ("majority", "reject")
# fields Label Studio's JSON-MIN and CSV exports add to every record, besides the task data
EXPORT_FIELDS = {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time",
                 "agreement"}


@method_options("data", "label_studio", used_by=EVERY_METHOD,
                aliases={"label_studio_root": "root", "label_studio_url": "url",
                         "label_studio_conflicts": "conflicts"})
@dataclass
class LabelStudioOptions:
    """How Label Studio's tasks and exports name the images (data.extra_labels, any dataset)."""

    root: str = opt("/", "Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: image references "
                         "in its tasks and exports are relative to it")
    url: str = opt("/data/local-files/?d=", "how Label Studio serves the images: this prefix + "
                                            "the path below root")
    conflicts: str = opt("majority", "annotators disagreeing in an export: majority (a tie is "
                                     "left out) or reject", choices=("majority", "reject"))


@dataclass(frozen=True)
class ImageLinks:
    """How images are named in tasks: ``url`` + path relative to ``root``."""

    root: str = "/"
    url: str = LOCAL_FILES

    def reference(self, path: str) -> str:
        relative = os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))
        if relative.startswith(".."):
            raise DataError(f"{path} is outside data.label_studio_root {self.root}; Label Studio "
                            "serves files below its document root only")
        return self.url + quote(relative.replace(os.sep, "/"), safe="/")

    def path(self, reference: str) -> str:
        """The file a task's image reference names (or the reference, for a plain path or a
        ``DATASET:INDEX`` id)."""
        for prefix in dict.fromkeys([self.url, LOCAL_FILES]):
            if reference.startswith(prefix):
                return os.path.join(os.path.abspath(self.root), unquote(reference[len(prefix):]))
        if "://" in reference or reference.startswith("/data/"):
            raise DataError(f"Label Studio image reference {shown(reference)} is not a local file "
                            f"under {self.url!r}; set data.label_studio_url (and "
                            "data.label_studio_root) to how the images were served")
        return reference


# --------------------------------------------------------------------------- out


def label_config(classes: Sequence[str]) -> str:
    """The labeling configuration of a single-choice image classification project."""
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in classes)
    return (f'<View>\n  <Image name="{OBJECT}" value="${IMAGE_KEY}"/>\n'
            f'  <Choices name="{CONTROL}" toName="{OBJECT}" choice="single" showInLine="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def task(reference: str, predicted: str | None, score: float, model_version: str) -> dict:
    """One import task; with a prediction unless ``predicted`` is empty (a cold start)."""
    entry: dict = {"data": {IMAGE_KEY: reference}}
    if predicted:
        entry["predictions"] = [{
            "model_version": model_version, "score": float(score),
            "result": [{"from_name": CONTROL, "to_name": OBJECT, "type": "choices",
                        "value": {"choices": [predicted]}}]}]
    return entry


def write_tasks(handle, rows: Iterable[tuple[str, str, float]], model_version: str,
                links: ImageLinks) -> int:
    """``(image path, predicted class or "", score)`` rows as a JSON list of tasks, one task
    at a time (a pool of millions never builds the list in memory); returns the count."""
    handle.write("[")
    count = 0
    for path, predicted, score in rows:
        if ":" in path and not os.path.exists(path) and not os.path.isabs(path):
            raise DataError(f"{path} is an image of an in-memory dataset, not a file Label Studio "
                            "can show; use the CSV format for it")
        handle.write(("," if count else "") + "\n " + json.dumps(
            task(links.reference(path), predicted, score, model_version), ensure_ascii=False))
        count += 1
    handle.write("\n]\n")
    return count


def config_path(tasks_file: Path) -> Path:
    """``tasks.json`` -> ``tasks.label_config.xml`` beside it."""
    return tasks_file.with_name(tasks_file.stem + ".label_config.xml")


# --------------------------------------------------------------------------- in


def is_export(path: Path) -> bool:
    """Whether a label list is a Label Studio export (JSON, or a CSV with its columns)."""
    if path.suffix.lower() == ".json":
        return True
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    return {"annotation_id", "annotator"} <= set(header)


def read_export(path: Path, links: ImageLinks, conflicts: str = "majority") -> list[tuple[str, str]]:
    """``(image, label)`` per task of an export, one label per task after ``conflicts``."""
    if conflicts not in CONFLICTS:
        raise DataError(f"data.label_studio_conflicts must be one of {', '.join(CONFLICTS)}")
    votes = _json_votes(path) if path.suffix.lower() == ".json" else _csv_votes(path)
    rows, left_out = [], Counter()
    for reference, labels in votes.items():
        if not labels:
            left_out["no annotation (or only skipped ones)"] += 1
            continue
        counts = Counter(labels).most_common()
        if len(counts) > 1 and (conflicts == "reject" or counts[0][1] == counts[1][1]):
            left_out["annotators disagree" + (" (a tie)" if conflicts == "majority" else "")] += 1
            continue
        rows.append((links.path(reference), counts[0][0]))
    if left_out:
        log.warning("%s: %s left out", path, ", ".join(f"{n} task(s): {why}" for why, n in left_out.items()))
    if not rows:
        raise DataError(f"Label Studio export {str(path)!r} has no usable annotation "
                        f"({dict(left_out) or 'no tasks'})")
    return rows


def _choice(value) -> list[str]:
    """The chosen classes in a result value, a JSON-MIN field or a CSV cell."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{") or text.startswith("["):
            try:
                return _choice(json.loads(text))
            except ValueError:
                pass
        return [text] if text else []
    if isinstance(value, dict):
        return [str(c) for c in value.get("choices", [])]
    if isinstance(value, list):
        return [c for item in value for c in _choice(item)]
    return []


def _one(choices: list[str], where: str) -> str | None:
    if len(choices) > 1:
        raise DataError(f"{where} chooses {len(choices)} classes ({', '.join(choices[:5])}); a "
                        "single-choice classification project is expected")
    return choices[0] if choices else None


def _json_votes(path: Path) -> dict[str, list[str]]:
    try:
        records = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"Label Studio export {str(path)!r} is not readable JSON ({str(error)[:100]})") \
            from None
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"Label Studio export {str(path)!r} is not a list of tasks")
    if any("annotations" in r or "completions" in r for r in records):
        return _full_votes(records, path)
    return _min_votes(records, path)


def _full_votes(tasks: list[dict], path: Path) -> dict[str, list[str]]:
    """JSON export: each task's data and every annotation's ``choices`` results."""
    votes: dict[str, list[str]] = {}
    for task_ in tasks:
        reference = _reference(task_.get("data") or {}, path)
        labels = votes.setdefault(reference, [])
        for annotation in task_.get("annotations", task_.get("completions")) or []:
            if annotation.get("was_cancelled") or annotation.get("skipped"):
                continue
            choices = [c for r in annotation.get("result") or [] if r.get("type") == "choices"
                       for c in _choice(r.get("value") or {})]
            label = _one(choices, f"{path}: an annotation of {shown(reference)}")
            if label is not None:
                labels.append(label)
    return votes


def _min_votes(records: Iterable[dict], path: Path) -> dict[str, list[str]]:
    """JSON-MIN / CSV export: one record per annotation, the choice under the control's name
    (``label`` in the configuration finessl writes; else every field that is not task data
    or export bookkeeping)."""
    votes: dict[str, list[str]] = {}
    for record in records:
        reference = _reference(record, path)
        fields = [CONTROL] if CONTROL in record else \
            [k for k in record if k not in EXPORT_FIELDS and k != _data_key(record)]
        choices = [c for k in fields for c in _choice(record[k])]
        label = _one(choices, f"{path}: a record of {shown(reference)}")
        votes.setdefault(reference, []).extend([label] if label is not None else [])
    return votes


def _csv_votes(path: Path) -> dict[str, list[str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return _min_votes(csv.DictReader(handle), path)
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"Label Studio export {str(path)!r} is not a readable CSV ({error})") from None


def _data_key(record: dict) -> str | None:
    return IMAGE_KEY if IMAGE_KEY in record else next(
        (k for k in record if isinstance(record[k], str) and k not in EXPORT_FIELDS
         and ("/" in record[k] or ":" in record[k])), None)


def _reference(data: dict, path: Path) -> str:
    key = _data_key(data)
    if key is None or not str(data[key]).strip():
        raise DataError(f"Label Studio export {str(path)!r}: a task has no image in its data "
                        f"(keys: {', '.join(list(data)[:8])}); the tasks need data.{IMAGE_KEY}")
    return str(data[key]).strip()
