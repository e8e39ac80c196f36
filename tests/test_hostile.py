"""Reliability, part 2: what a hostile-but-fair user does to the newer features.

Classes (each with at least two variants): divergence, test-set leaks, self-contradicting
training data, writes outside the run directory, label-next paths and re-runs, values YAML
misreads, crafted or damaged files, resource faults, EXIF orientation. Every CLI case
checks the exit code, no traceback, a short message, and that existing runs are unchanged.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import finessl
from finessl.config import apply_overrides, load_preset
from finessl.rundir import RunDir

from helpers import digest, make_image_folder, run_cli, write_image

FAST = ["--train.steps", "2", "--train.steps_per_epoch", "2", "--train.tensorboard", "false"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "run"
    finessl.train("smoke", out, callbacks=[])
    return out


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


@pytest.fixture
def image(tmp_path):
    return write_image(tmp_path / "img.png", 0, seed=0)


def strict_json(path: Path):
    """Parses as strict JSON (NaN / Infinity are not JSON)."""
    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]
    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------- 1. divergence


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_diverging_run_stops_with_exit_3_and_keeps_its_last_good_checkpoint(capsys, tmp_path,
                                                                               precision):
    out = tmp_path / "nan"
    err = run_cli(capsys, ["train", "--preset", "smoke", "--output", out, "--train.lr", "1e6",
                           "--train.precision", precision, "--train.steps", "30",
                           "--train.steps_per_epoch", "5", "--train.tensorboard", "false"], code=3)
    assert "diverged" in err and "train.lr" in err
    assert not (out / RunDir.FINAL).exists()  # no final numbers for a diverged run
    if out.exists():  # a checkpoint was written before it diverged: it is finite and loads
        state, _ = RunDir(out).load_adapter()
        assert all(torch.isfinite(t).all() for t in state.values())
        strict_json(out / RunDir.METRICS)
        assert RunDir(out).load_state()["step"] % 5 == 0


def test_the_loss_check_stops_before_the_weights_change():
    """fp32: the first non-finite loss raises before backward; the weights are untouched."""
    from finessl.builder import build_run
    from finessl.engine.trainer import Trainer
    from finessl.errors import TrainingDiverged

    config = load_preset("smoke")
    pieces = build_run(config)
    trainer = Trainer(config, pieces.model, pieces.algorithm, pieces.data)
    before = {k: v.clone() for k, v in pieces.model.trainable_state_dict().items()}
    batch = next(trainer.batches(0, 0))
    batch.images = batch.images * float("nan")
    with pytest.raises(TrainingDiverged, match="the loss is nan"):
        trainer.train_step(batch)
    for key, value in pieces.model.trainable_state_dict().items():
        assert torch.equal(value, before[key]), key
    pieces.model.head.weight.data[0, 0] = float("inf")  # non-finite weights are never saved
    with pytest.raises(TrainingDiverged, match="non-finite"):
        trainer.save()


def nan_adapter(run: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = run / RunDir.ADAPTER
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    key = next(k for k in tensors if "head" in k)
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("argv", [
    ["predict", "--run", "RUN", "IMG"],
    ["label", "--run", "RUN", "IMG", "--threshold", "0.5"],
    ["eval", "--run", "RUN"],
    ["export", "--run", "RUN", "--out", "OUT"],
    ["train", "--preset", "smoke", "--output", "NEW", "--init-from", "RUN", *FAST],
])
def test_no_command_accepts_non_finite_weights(capsys, run, image, tmp_path, argv):
    nan_adapter(run)
    before = digest(run)
    names = {"RUN": run, "IMG": image, "OUT": tmp_path / "m.pt2", "NEW": tmp_path / "new"}
    err = run_cli(capsys, [names.get(a, a) for a in argv])
    assert "non-finite" in err and "diverged" in err
    assert digest(run) == before and not (tmp_path / "new").exists()


def test_report_of_a_nan_adapter_run_and_strict_json_files(capsys, run):
    nan_adapter(run)  # the report reads only the adapter's metadata: it still works
    run_cli(capsys, ["report", "--run", run], code=0)
    from finessl.rundir import write_json

    write_json(run / "x.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": 2.5})
    assert strict_json(run / "x.json") == {"a": None, "b": [1.0, None], "c": 2.5}
    RunDir(run).append_metrics({"kind": "eval", "step": 99, "top1": float("nan")})
    assert strict_json(run / RunDir.METRICS)[-1]["top1"] is None


def test_non_finite_predictions_are_skipped_not_labeled(run, image):
    from finessl.inference import auto_label, load

    predictor = load(run, "cpu")
    real = predictor.model

    class HalfNaN(torch.nn.Module):
        def forward(self, images):
            logits = real(images)
            logits[::2] = float("nan")
            return logits

    predictor.model = HalfNaN()
    report = predictor.predict([image] * 4, batch_size=4)
    assert len(report.predictions) == 2 and len(report.failed) == 2
    assert all("non-finite" in reason for _, reason in report.failed)
    assert len(auto_label(report, threshold=0.0)) == 2


# --------------------------------------------------------------------------- 2. test-set leaks


def test_a_test_folder_equal_to_the_labeled_folder_is_refused(capsys, tmp_path):
    root = make_image_folder(tmp_path / "data")
    base = ["train", "--preset", "smoke", *FAST, "--data.name", "folder", "--data.root", root,
            "--output", tmp_path / "o"]
    err = run_cli(capsys, [*base, "--data.test_dir", root / "labeled"])
    assert "test set" in err and "training" in err
    # the same folder reached through another name (a relative path, a link) is the same
    link = tmp_path / "alias"
    link.symlink_to(root / "labeled")
    err = run_cli(capsys, [*base, "--data.test_dir", link])
    assert "test set" in err
    assert not (tmp_path / "o").exists()


def test_test_images_in_extra_labels_are_refused(capsys, tmp_path):
    root = make_image_folder(tmp_path / "data")
    labels = tmp_path / "extra.csv"
    test_image = sorted((root / "test" / "cat").iterdir())[0]
    labels.write_text(f"path,label\n{test_image},cat\n")
    err = run_cli(capsys, ["train", "--preset", "smoke", *FAST, "--data.name", "folder",
                           "--data.root", root, "--data.extra_labels", labels,
                           "--output", tmp_path / "o"])
    assert "data.extra_labels names 1 image(s) of the test set" in err


def test_a_class_without_test_images_is_reported(capsys, tmp_path, caplog):
    root = make_image_folder(tmp_path / "data", classes=("cat", "dog", "owl"))
    shutil.rmtree(root / "test" / "owl")
    out = tmp_path / "o"
    with caplog.at_level("WARNING"):
        run_cli(capsys, ["train", "--preset", "smoke", *FAST, "--data.name", "folder",
                         "--data.root", root, "--data.labels_per_class", "2", "--output", out], code=0)
    assert "no images of 1 class(es) (owl)" in caplog.text
    assert RunDir(out).read_final()["test_missing_classes"] == ["owl"]
    (root / "test" / "cat").rename(root / "cat-aside")  # an empty test set is refused
    shutil.rmtree(root / "test" / "dog")
    (root / "test" / "dog").mkdir()
    (root / "test" / "cat").mkdir()
    assert "test set is empty" in run_cli(capsys, ["train", "--preset", "smoke", *FAST,
                                                   "--data.name", "folder", "--data.root", root,
                                                   "--output", tmp_path / "o2"])


# --------------------------------------------------------------------------- 3. contradictions


def csv_dataset(tmp_path, rows):
    for i, (name, _) in enumerate(rows):
        if not (tmp_path / name).exists():
            write_image(tmp_path / name, i % 2, seed=i)
    (tmp_path / "train.csv").write_text("".join(f"{n},{label}\n" for n, label in rows))
    (tmp_path / "test.csv").write_text("t0.png,cat\nt1.png,dog\n")
    write_image(tmp_path / "t0.png", 0, seed=90)
    write_image(tmp_path / "t1.png", 1, seed=91)
    return ["train", "--preset", "smoke", *FAST, "--data.name", "csv", "--data.labels_per_class", "2",
            "--data.csv", tmp_path / "train.csv", "--data.test_csv", tmp_path / "test.csv",
            "--output", tmp_path / "o"]


@pytest.mark.parametrize("second, message", [
    ("dog", "twice with different labels ('cat' and 'dog')"),
    ("cat", "twice with the same label 'cat'"),
])
def test_a_csv_listing_a_file_twice_is_refused(capsys, tmp_path, second, message):
    rows = [(f"i{i}.png", "cat" if i % 2 else "dog") for i in range(6)]
    rows += [("i1.png", second)]
    assert message in run_cli(capsys, csv_dataset(tmp_path, rows))


def test_extra_labels_that_contradict_or_repeat_are_refused(capsys, tmp_path):
    root = make_image_folder(tmp_path / "data")
    base = ["train", "--preset", "smoke", *FAST, "--data.name", "folder", "--data.root", root,
            "--data.labels_per_class", "2", "--output", tmp_path / "o"]
    labels = tmp_path / "extra.csv"
    cat = sorted((root / "labeled" / "cat").iterdir())[3]  # in the cat folder, maybe not drawn
    labels.write_text(f"path,label\n{cat},dog\n")
    assert "already labels it 'cat'" in run_cli(capsys, [*base, "--data.extra_labels", labels])
    outside = write_image(tmp_path / "new.png", 0, seed=5)
    labels.write_text(f"path,label\n{outside},cat\n{tmp_path}/./new.png,dog\n")
    assert "lists one image twice as 'cat' and as 'dog'" in run_cli(
        capsys, [*base, "--data.extra_labels", labels])
    labels.write_text("path,label\n")
    assert "has no labeled rows" in run_cli(capsys, [*base, "--data.extra_labels", labels])
    labels.write_text(f"{cat},cat\n")  # agreeing with the folder is fine
    run_cli(capsys, [*base, "--data.extra_labels", labels], code=0)


@pytest.mark.parametrize("edit, message", [
    (["--model.init_seed", "7"], "frozen backbone differs"),
    (["--model.peft", "bitfit"], "does not fit"),
])
def test_warm_start_from_another_frozen_model_is_refused(capsys, run, tmp_path, edit, message):
    before = digest(run)
    err = run_cli(capsys, ["train", "--preset", "smoke", *FAST, "--init-from", run, *edit,
                           "--output", tmp_path / "new"])
    assert "model.init_from" in err and message in err
    assert digest(run) == before and not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- 4. writes stay inside


@pytest.mark.parametrize("name", [RunDir.METRICS, RunDir.LOCK])
def test_links_in_a_run_directory_are_never_written_through(capsys, run, tmp_path, name):
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious\n")
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(target)
    err = run_cli(capsys, ["train", "--resume", run, "--train.steps", "8"])
    assert "symbolic link" in err
    assert target.read_text() == "precious\n"


def test_a_linked_report_page_is_refused(capsys, run, tmp_path):
    target = tmp_path / "index.html"
    target.write_text("mine")
    (run / RunDir.REPORT).mkdir()
    (run / RunDir.REPORT / "index.html").symlink_to(target)
    assert "symbolic link" in run_cli(capsys, ["report", "--run", run])
    assert target.read_text() == "mine"


@pytest.mark.parametrize("name", [RunDir.CSV, RunDir.EVAL, RunDir.TENSORBOARD])
def test_every_file_a_run_writes_marks_the_folder_as_a_run(capsys, tmp_path, name):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / name).write_text("step,kind,name,value\n1,train,loss,9\n")
    err = run_cli(capsys, ["train", "--preset", "smoke", *FAST, "--output", folder])
    assert "already holds a run" in err and name in err
    assert (folder / name).read_text() == "step,kind,name,value\n1,train,loss,9\n"


@pytest.mark.parametrize("command", ["predict", "label", "suggest"])
def test_out_equal_to_an_input_list_is_refused(capsys, run, image, tmp_path, command):
    listing = tmp_path / "list.csv"
    listing.write_text(f"path\n{image}\n")
    extra = ["--budget", "1"] if command == "suggest" else []
    err = run_cli(capsys, [command, "--run", run, listing, *extra, "--out", listing])
    assert "also an input" in err
    assert listing.read_text() == f"path\n{image}\n"


def test_out_is_written_whole_and_replaces_a_link_instead_of_following_it(capsys, run, image,
                                                                         tmp_path):
    target = tmp_path / "target.csv"
    target.write_text("keep\n")
    out = tmp_path / "out.csv"
    out.symlink_to(target)
    run_cli(capsys, ["predict", "--run", run, image, "--out", out], code=0)
    assert target.read_text() == "keep\n" and not out.is_symlink()
    assert out.read_text().startswith("path,label,confidence")
    assert not list(tmp_path.glob(".out.csv.*"))  # no temporary file left


# --------------------------------------------------------------------------- 5. label-next cycle


def test_suggest_writes_absolute_paths_that_extra_labels_reads_from_anywhere(capsys, tmp_path,
                                                                           monkeypatch):
    root = make_image_folder(tmp_path / "data", per_class=4, unlabeled=8)
    monkeypatch.chdir(tmp_path)  # relative data.root, as the README's cycle is typed
    config = apply_overrides(load_preset("smoke"), {
        "data.name": "folder", "data.root": "data", "data.labels_per_class": "2",
        "train.steps": "2", "train.steps_per_epoch": "2", "train.tensorboard": "false"})
    finessl.train(config, "r0", callbacks=[])
    elsewhere = tmp_path / "labels" / "deep"
    elsewhere.mkdir(parents=True)
    run_cli(capsys, ["suggest", "--run", "r0", "--budget", "3", "--out", elsewhere / "next.csv"], code=0)
    rows = list(csv.DictReader((elsewhere / "next.csv").open()))
    assert all(Path(r["path"]).is_absolute() and Path(r["path"]).is_file() for r in rows)
    (elsewhere / "labeled.csv").write_text("path,label\n" + "".join(f"{r['path']},cat\n" for r in rows))
    monkeypatch.chdir(elsewhere)  # train from yet another folder
    run_cli(capsys, ["train", "--preset", "smoke", *FAST, "--data.name", "folder", "--data.root", root,
                     "--data.labels_per_class", "2", "--data.extra_labels", "labeled.csv",
                     "--init-from", tmp_path / "r0", "--output", tmp_path / "r1"], code=0)
    assert RunDir(tmp_path / "r1").read_final()["num_labeled"] == 4 + 3
    # a relative path that exists only from the working directory is ambiguous: refused
    monkeypatch.chdir(tmp_path)
    unlabeled = sorted((root / "unlabeled").iterdir())[0].relative_to(tmp_path)
    (elsewhere / "relative.csv").write_text(f"{unlabeled},cat\n")
    err = run_cli(capsys, ["train", "--preset", "smoke", *FAST, "--data.name", "folder",
                           "--data.root", root, "--data.extra_labels", elsewhere / "relative.csv",
                           "--output", tmp_path / "r2"])
    assert "relative to the CSV's folder" in err and "absolute path" in err


LOOP = ["loop", "--preset", "smoke", "--rounds", "1", "--budget", "4", "--train.steps", "2",
        "--train.steps_per_epoch", "2", "--train.tensorboard", "false"]


def test_loop_refuses_to_reuse_rounds_under_another_strategy_or_budget(capsys, tmp_path):
    out = tmp_path / "loop"
    run_cli(capsys, [*LOOP, "--output", out, "--strategy", "margin"], code=0)
    before = digest(out)
    assert "strategy 'margin', not 'entropy'" in run_cli(
        capsys, [*LOOP, "--output", out, "--strategy", "entropy"])
    assert "budget 4, not 8" in run_cli(
        capsys, [*LOOP, "--budget", "8", "--output", out, "--strategy", "margin"])
    assert digest(out) == before
    run_cli(capsys, [*LOOP, "--output", out, "--strategy", "margin"], code=0)  # the same loop: reused


def test_loop_checks_the_labels_can_be_revealed_before_round_0(capsys, tmp_path):
    root = make_image_folder(tmp_path / "data")
    out = tmp_path / "loop"
    err = run_cli(capsys, [*LOOP, "--data.name", "folder", "--data.root", root, "--output", out])
    assert "needs a dataset whose training images all have labels" in err
    assert not (out / "round0").exists()


# --------------------------------------------------------------------------- 6. values YAML misreads


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("1e6", 1e6), ("1e-9", 1e-9), ("1E-3", 1e-3),
                                         ("0.5", 0.5), ("3", 3.0)])
def test_numbers_in_every_notation_parse(capsys, text, value):
    from finessl.cli import main

    assert main(["config", "--preset", "smoke", "--train.lr", text]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("  lr:"))
    assert float(line.split()[1]) == value


def test_numbers_in_a_yaml_file_and_integral_floats(tmp_path):
    from finessl.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 1e-4, steps: 1.0e3, eps: 1E-6}\n")  # YAML 1.1 reads 1e-4 as text
    config = load_config(path)
    assert config.train.lr == 1e-4 and config.train.steps == 1000 and config.train.eps == 1e-6
    assert isinstance(config.train.steps, int)


@pytest.mark.parametrize("overrides, message", [
    (["--train.lr", ".inf"], "finite"),
    (["--train.lr", "nan"], "finite"),
    (["--train.lr", "-.inf"], "finite"),
    (["--model.text_template", "no place for a name"], "must hold one {}"),
    (["--model.text_template", "{0} {1}"], "must hold one {}"),
    (["--train.betas", "0.9"], "needs 2 values"),
    (["--train.betas", "0.9,0.99,0.5"], "needs 2 values"),
    (["--train.betas", "0.9,1.5"], "must be < 1"),
    (["--train.steps", "1.5"], "expects int"),
])
def test_values_are_refused_the_same_way_by_every_command(capsys, tmp_path, overrides, message):
    for command in (["config", "--preset", "smoke"],
                    ["train", "--preset", "smoke", *FAST, "--output", tmp_path / "o"]):
        assert message in run_cli(capsys, [*command, *overrides])
    assert not (tmp_path / "o").exists()


def test_a_template_with_braces_is_a_template(capsys):
    from finessl.cli import main

    assert main(["config", "--preset", "smoke", "--model.text_template", "{} in the wild"]) == 0
    assert "text_template: '{} in the wild'" in capsys.readouterr().out


@pytest.mark.parametrize("overrides", [["--model.peft", "lorax"], ["--model.backbone", "ViT-Q-1"],
                                        ["--algorithm.name", "nomatch"]])
def test_config_refuses_names_train_refuses(capsys, overrides):
    run_cli(capsys, ["config", "--preset", "smoke", *overrides])


def test_duplicate_keys_in_a_yaml_file_are_an_error(capsys, tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("model:\n  backbone: tiny-vit\ntrain:\n  steps: 3\nmodel:\n  peft: bitfit\n")
    err = run_cli(capsys, ["train", "--config", path, "--output", tmp_path / "o"])
    assert f"{path}:5" in err and "duplicate key 'model'" in err
    path.write_text("train:\n  steps: 3\n  steps: 4\n")
    assert "duplicate key 'steps'" in run_cli(capsys, ["config", "--config", path])


# --------------------------------------------------------------------------- 7. crafted files


def rewrite_adapter_metadata(run: Path, **changes) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = run / RunDir.ADAPTER
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    meta.update({k: json.dumps(v) for k, v in changes.items()})
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("changes, message", [
    ({"classes": 5}, "'classes'"),
    ({"classes": ["a", "a", "b", "c"]}, "'classes'"),
    ({"num_features": -3}, "'num_features'"),
    ({"image_size": 10 ** 9}, "'image_size'"),
    ({"mean": [0.5]}, "'mean'"),
    ({"std": [0.0, 0.0, 0.0]}, "'std'"),
    ({"backbone": ["tiny-vit"]}, "'backbone'"),
    ({"frozen_fingerprint": "abc"}, "'frozen_fingerprint'"),
])
@pytest.mark.parametrize("command", ["predict", "report"])
def test_crafted_adapter_metadata_is_damage(capsys, run, image, changes, message, command):
    rewrite_adapter_metadata(run, **changes)
    before = digest(run)
    argv = ["predict", "--run", run, image] if command == "predict" else ["report", "--run", run]
    err = run_cli(capsys, argv)
    assert "is damaged" in err and message in err
    assert digest(run) == before


def test_crafted_predictions_final_and_metrics_are_damage(capsys, run):
    from safetensors.torch import save_file

    report = ["report", "--run", run]
    good = {p: (run / p).read_bytes() for p in (RunDir.PREDICTIONS, RunDir.FINAL, RunDir.METRICS)}
    save_file({"logits": torch.zeros(3, 4), "labels": torch.tensor([0, 7, 1])}, str(run / RunDir.PREDICTIONS))
    assert "labels outside the 4 classes" in run_cli(capsys, report)
    (run / RunDir.PREDICTIONS).write_bytes(good[RunDir.PREDICTIONS])
    for final in ([1, 2], {"top1": "high"}, {"per_class_acc": "abc"}, {"steps": -1}):
        (run / RunDir.FINAL).write_text(json.dumps(final))
        assert f"{RunDir.FINAL}:" in run_cli(capsys, report)
    (run / RunDir.FINAL).write_text('{"top1": NaN}')
    assert "not valid JSON" in run_cli(capsys, report)
    (run / RunDir.FINAL).write_bytes(good[RunDir.FINAL])
    for line in ('{"kind": "eval", "step": "3"}', '[1, 2]', '{"kind": "eval", "step": 3, "top1": [1]}'):
        (run / RunDir.METRICS).write_text(line + "\n" + good[RunDir.METRICS].decode())
        assert f"{RunDir.METRICS} line 1" in run_cli(capsys, report)


def test_a_yaml_alias_bomb_in_a_run_config_is_refused_at_once(capsys, run, image):
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level, name in enumerate("bcdefghi"):
        previous = "abcdefghi"[level]
        bomb.append(f"{name}: &{name} [{','.join(['*' + previous] * 9)}]")
    (run / RunDir.CONFIG).write_text("\n".join(bomb) + "\n")
    began = time.time()
    err = run_cli(capsys, ["predict", "--run", run, image])
    assert time.time() - began < 30
    assert "is damaged" in err and "aliases" in err and len(err) < 600


def test_no_message_echoes_a_huge_value(capsys, tmp_path):
    err = run_cli(capsys, ["train", "--preset", "smoke", "--train.steps", "9" * 5000 + "x",
                           "--output", tmp_path / "o"])
    assert "characters" in err and len(err) < 600


def test_a_pickle_as_pretrained_weights_is_one_line(capsys, tmp_path):
    import pickle

    path = tmp_path / "weights.pt"
    path.write_bytes(pickle.dumps({"weight": object()}))
    for backbone in ("tiny-vit", "efficientnet-lite0"):
        err = run_cli(capsys, ["train", "--preset", "smoke", *FAST, "--model.backbone", backbone,
                               "--model.peft", "linear", "--model.pretrained", path,
                               "--output", tmp_path / "o"])
        assert "is not a weights file finessl can load" in err and "internal error" not in err


def test_a_binary_file_named_csv_and_bad_outputs_are_one_line(capsys, run, tmp_path):
    binary = tmp_path / "list.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    assert "not a readable UTF-8 CSV" in run_cli(capsys, ["predict", "--run", run, binary])
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing-folder")
    assert "symbolic link" in run_cli(capsys, ["train", "--preset", "smoke", *FAST, "--output", dangling])
    assert "symbolic link" in run_cli(capsys, ["predict", "--run", run, tmp_path / "x.png", "--out",
                                               dangling])
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "not a folder" in run_cli(capsys, ["train", "--preset", "smoke", *FAST, "--output", afile])


# --------------------------------------------------------------------------- 8. resources


@pytest.mark.parametrize("overrides, message", [
    (["--algorithm.uratio", "1000"], "larger than the unlabeled pool"),
    (["--algorithm.uratio", "1000000000"], "larger than the unlabeled pool"),
    (["--train.batch_size", "100000000", "--algorithm.name", "supervised"], "memory"),
])
def test_absurd_batches_are_refused_up_front(capsys, tmp_path, overrides, message):
    err = run_cli(capsys, ["train", "--preset", "smoke", *FAST, *overrides, "--output", tmp_path / "o"])
    assert message in err
    assert not (tmp_path / "o").exists()


def test_export_onto_a_full_disk_is_one_line(capsys, run, tmp_path, monkeypatch):
    import errno

    import finessl.inference as inference

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inference, "atomic_write", full)
    err = run_cli(capsys, ["export", "--run", run, "--out", tmp_path / "m.pt2"])
    assert "No space left on device" in err and not (tmp_path / "m.pt2").exists()


def test_a_run_stopped_before_its_first_checkpoint_restarts(capsys, run):
    for name in (RunDir.STATE, RunDir.ADAPTER, RunDir.FINAL, RunDir.PREDICTIONS):
        (run / name).unlink()  # what kill -9 during the first epoch leaves
    err = run_cli(capsys, ["train", "--preset", "smoke", *FAST, "--output", run])
    assert "stopped before its first checkpoint" in err and "--resume" in err
    run_cli(capsys, ["train", "--resume", run], code=0)
    assert RunDir(run).read_final()["steps"] == load_preset("smoke").train.steps


SLOW_RUN = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    import torch
    import finessl
    from finessl.errors import TrainingInterrupted

    out, marker = Path(sys.argv[1]), Path(sys.argv[2])

    class Slow(torch.nn.Module):
        """A backbone whose forward takes minutes once the marker file exists."""
        num_features = 16

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.proj = torch.nn.Linear(3 * 32 * 32, 16)

        def forward(self, images):
            while marker.exists():
                time.sleep(0.05)
            return self.proj(images.flatten(1))

    config = finessl.load_preset("smoke")
    config.model.peft = "full"
    config.train.steps, config.train.eval_every, config.train.tensorboard = 6, 1, False
    try:
        finessl.train(config, out, backbone=Slow(), callbacks=[], resume=len(sys.argv) > 3)
    except TrainingInterrupted as error:
        print(error, file=sys.stderr)
        sys.exit(143)
''')


def test_sigterm_inside_a_long_step_takes_effect_within_seconds(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW_RUN)
    out, marker = tmp_path / "run", tmp_path / "slow"
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / RunDir.STATE).exists():
        time.sleep(0.1)
    marker.touch()  # every step from now on would run until the marker goes
    time.sleep(2)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    took = time.time() - sent
    assert proc.returncode == 143, err
    assert took < 120, took  # the step would never end by itself: the grace period ended it
    assert "abandoned" in err and "last checkpoint" in err
    step = RunDir(out).load_state()["step"]
    marker.unlink()
    done = subprocess.run([sys.executable, str(script), str(out), str(marker), "resume"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert RunDir(out).read_final()["steps"] == 6 and step >= 1


def test_kill_9_before_the_first_checkpoint_then_resume(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW_RUN)
    out, marker = tmp_path / "run", tmp_path / "slow"
    marker.touch()  # the first step never ends
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / RunDir.METRICS).exists():
        time.sleep(0.1)
    time.sleep(1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert (out / RunDir.CONFIG).is_file() and not (out / RunDir.STATE).exists()
    marker.unlink()
    done = subprocess.run([sys.executable, str(script), str(out), str(marker), "resume"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert RunDir(out).read_final()["steps"] == 6


# --------------------------------------------------------------------------- 9. EXIF orientation


def exif_rotated(path: Path, orientation: int = 6) -> tuple[Path, np.ndarray]:
    """A 40 x 20 image stored sideways with an EXIF orientation tag; returns the upright pixels."""
    upright = np.zeros((40, 20, 3), dtype=np.uint8)
    upright[:10] = (255, 0, 0)  # red on top when upright
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # what a phone writes: turned by 90
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=100)
    return path, upright


def test_exif_orientation_is_applied_when_images_are_read(tmp_path):
    from finessl.data.datasets import load_image

    path, upright = exif_rotated(tmp_path / "phone.jpg")
    loaded = np.asarray(load_image(path))
    assert loaded.shape == upright.shape  # 40 high, 20 wide, as the camera was held
    assert loaded[:10, :, 0].mean() > 200 and loaded[30:, :, 0].mean() < 60
    plain = tmp_path / "plain.jpg"  # no tag: unchanged
    Image.fromarray(upright).save(plain, quality=100)
    assert np.asarray(load_image(plain)).shape == (40, 20, 3)


def test_predict_and_training_see_the_upright_photo(tmp_path, run):
    from finessl.data.datasets import FileImages
    from finessl.inference import load

    phone, upright = exif_rotated(tmp_path / "phone.jpg")
    turned = tmp_path / "turned.png"
    Image.fromarray(upright).save(turned)
    predictor = load(run, "cpu")
    a, b = predictor.predict([phone, turned]).predictions
    assert a.label == b.label and abs(a.confidence - b.confidence) < 0.02
    image, _ = FileImages([phone], [0])[0]  # the loader of folder / CSV training data
    assert image.size == (20, 40)
