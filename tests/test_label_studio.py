"""Label Studio round trip: tasks with predictions out, JSON / JSON-MIN / CSV exports in.

The export fixtures follow Label Studio's documented formats: the JSON export's tasks
(``data``, ``annotations`` with ``result`` entries of type ``choices``, ``was_cancelled``),
and the JSON-MIN / CSV exports of its converter (one record per annotation: the task data,
the control tag's value, ``id``, ``annotator``, ``annotation_id``, ``created_at``,
``updated_at``, ``lead_time``)."""

import csv
import json
import logging
import xml.etree.ElementTree as ET

import pytest

from finessl.cli import main
from finessl.config import apply_overrides
from finessl.data.label_studio import ImageLinks, config_path, label_config, read_export
from finessl.data.ssl_data import build_ssl_data
from finessl.errors import DataError

from helpers import trained_folder_run

URL = "/data/local-files/?d="


def annotation(label, cancelled=False, annotator=1):
    return {"id": annotator * 10, "completed_by": annotator, "was_cancelled": cancelled,
            "ground_truth": False, "lead_time": 2.5, "created_at": "2026-12-01T10:00:00Z",
            "result": [] if cancelled else [{
                "id": "r1", "from_name": "label", "to_name": "image", "type": "choices",
                "origin": "manual", "value": {"choices": [label]}}]}


def full_export(root):
    """The JSON export: every task with its annotations (and the prediction it was given)."""
    def t(i, name, *annotations):
        return {"id": i, "data": {"image": f"{URL}{name}"}, "project": 3,
                "annotations": list(annotations),
                "predictions": [{"model_version": "finessl run", "score": 0.6, "result": []}]}
    return [
        t(1, "pool/a%20b.png", annotation("cat", annotator=1), annotation("cat", annotator=2)),
        t(2, "pool/b.png", annotation("cat", annotator=1), annotation("dog", annotator=2)),  # a tie
        t(3, "pool/c.png", annotation("dog", annotator=1), annotation("dog", annotator=2),
          annotation("cat", annotator=3)),  # 2 : 1
        t(4, "pool/d.png", annotation("cat", cancelled=True)),  # skipped: no label
        t(5, "pool/e.png"),  # never annotated
    ]


def test_a_json_export_gives_one_label_per_task_and_reports_what_it_left_out(tmp_path, caplog):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(full_export(tmp_path)))
    links = ImageLinks(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        rows = read_export(path, links, "majority")
    assert rows == [(str(tmp_path / "pool" / "a b.png"), "cat"), (str(tmp_path / "pool" / "c.png"), "dog")]
    assert "1 task(s): annotators disagree (a tie)" in caplog.text
    assert "2 task(s): no annotation (or only skipped ones)" in caplog.text
    # reject: any disagreement leaves the task out (task 3 as well)
    assert read_export(path, links, "reject") == rows[:1]


def test_json_min_and_csv_exports_read_the_same(tmp_path):
    records = [  # one per annotation, as Label Studio's converter writes them
        {"image": f"{URL}pool/x.png", "id": 7, "label": "dog", "annotator": "a@x.org",
         "annotation_id": 70, "created_at": "2026-12-01T10:00:00Z", "updated_at": "2026-12-01T10:00:00Z",
         "lead_time": 3.1},
        {"image": f"{URL}pool/y.png", "id": 8, "label": "cat", "annotator": "a@x.org",
         "annotation_id": 80, "created_at": "2026-12-01T10:00:00Z", "updated_at": "2026-12-01T10:00:00Z",
         "lead_time": 1.0},
        {"image": f"{URL}pool/y.png", "id": 8, "label": "cat", "annotator": "b@x.org",
         "annotation_id": 81, "created_at": "2026-12-01T10:05:00Z", "updated_at": "2026-12-01T10:05:00Z",
         "lead_time": 1.2},
    ]
    minimal = tmp_path / "min.json"
    minimal.write_text(json.dumps(records))
    table = tmp_path / "export.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    links = ImageLinks(str(tmp_path))
    expected = [(str(tmp_path / "pool" / "x.png"), "dog"), (str(tmp_path / "pool" / "y.png"), "cat")]
    assert read_export(minimal, links) == expected
    assert read_export(table, links) == expected


def test_references_map_both_ways_and_a_foreign_url_is_a_clear_error(tmp_path):
    links = ImageLinks(str(tmp_path))
    path = str(tmp_path / "sub dir" / "ü.png")
    reference = links.reference(path)
    assert reference == f"{URL}sub%20dir/%C3%BC.png" and links.path(reference) == path
    served = ImageLinks(str(tmp_path), "http://images.local/")
    assert served.path(served.reference(path)) == path
    assert links.path("/plain/file.png") == "/plain/file.png"  # a plain path is used as it is
    with pytest.raises(DataError, match="data.label_studio_url"):
        links.path("https://elsewhere.org/1.png")
    with pytest.raises(DataError, match="outside data.label_studio_root"):
        links.reference("/somewhere/else.png")


def test_multi_choice_annotations_are_refused(tmp_path):
    task = {"data": {"image": f"{URL}a.png"}, "annotations": [annotation("cat")]}
    task["annotations"][0]["result"][0]["value"]["choices"] = ["cat", "dog"]
    path = tmp_path / "two.json"
    path.write_text(json.dumps([task]))
    with pytest.raises(DataError, match="single-choice"):
        read_export(path, ImageLinks(str(tmp_path)))


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    return trained_folder_run(tmp_path_factory.mktemp("ls"), unlabeled=8, steps=2)


def test_suggest_to_label_studio_then_its_edited_export_trains(folder_run, tmp_path):
    root, run, config = folder_run
    tasks_file = tmp_path / "tasks.json"
    assert main(["suggest", "--run", str(run), str(root / "unlabeled"), "--budget", "3",
                 "--format", "label-studio", "--label-studio-root", str(root),
                 "--workers", "0", "--out", str(tasks_file)]) == 0
    tasks = json.loads(tasks_file.read_text())
    assert len(tasks) == 3
    for task in tasks:
        assert task["data"]["image"].startswith(URL + "unlabeled/")
        [prediction] = task["predictions"]
        assert prediction["model_version"] == "finessl run" and 0 <= prediction["score"] <= 1
        [result] = prediction["result"]
        assert (result["from_name"], result["to_name"], result["type"]) == ("label", "image", "choices")
        assert result["value"]["choices"][0] in ("cat", "dog")
    view = ET.fromstring(config_path(tasks_file).read_text())  # the project's labeling config
    image, choices = view.find("Image"), view.find("Choices")
    assert image.get("value") == "$image" and choices.get("toName") == image.get("name")
    assert choices.get("name") == "label" and [c.get("value") for c in choices] == ["cat", "dog"]
    # the annotator corrects every prediction to "dog"; Label Studio exports the tasks
    export = [{"id": i, "data": t["data"], "predictions": t["predictions"],
               "annotations": [annotation("dog")]} for i, t in enumerate(tasks)]
    exported = tmp_path / "project-3-at-2026-12-01.json"
    exported.write_text(json.dumps(export))
    trained = apply_overrides(config, {"data.extra_labels": str(exported),
                                       "data.label_studio_root": str(root)})
    data = build_ssl_data(trained.data, 32, (0.5,) * 3, (0.5,) * 3, 0, strong_views=0)
    paths, given = data.source.train.paths, data.labeled.labels  # extra labels by pool index
    labeled = {paths[int(i)]: given.get(int(i), int(data.source.train_targets[int(i)]))
               for i in data.labeled_indices}
    picked = [str(root / t["data"]["image"][len(URL):]) for t in tasks]
    assert all(labeled[p] == 1 for p in picked)  # dog
    assert len(labeled) == 2 * 2 + 3
    out = tmp_path / "run2"
    assert main(["train", "--config", str(run / "config.yaml"), "--output", str(out),
                 "--data.extra_labels", str(exported), "--data.label_studio_root", str(root),
                 "--train.steps", "2"]) == 0


def test_label_writes_pre_annotations_and_needs_an_output_file(folder_run, tmp_path, capsys):
    root, run, _ = folder_run
    tasks_file = tmp_path / "auto.json"
    assert main(["label", "--run", str(run), str(root / "unlabeled"), "--threshold", "0",
                 "--format", "label-studio", "--label-studio-root", str(root), "--workers", "0",
                 "--out", str(tasks_file)]) == 0
    tasks = json.loads(tasks_file.read_text())
    assert len(tasks) == 8 and all(t["predictions"][0]["result"][0]["value"]["choices"] for t in tasks)
    assert config_path(tasks_file).is_file()
    capsys.readouterr()
    assert main(["label", "--run", str(run), str(root / "unlabeled"), "--format", "label-studio"]) == 2
    assert "--format label-studio needs --out" in capsys.readouterr().err


def test_the_labeling_config_escapes_class_names():
    view = ET.fromstring(label_config(['a "quoted" <class>', "plain"]))
    assert [c.get("value") for c in view.find("Choices")] == ['a "quoted" <class>', "plain"]
