"""Bad input, damaged files and faults through the real command line (``main(argv)``).

Every case checks the exit code, that no exception escapes (no traceback), that the
message is one to three lines and names the problem, and — where a run already exists —
that its files are byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import finessl
from finessl.cli import main
from finessl.rundir import RunDir

from helpers import digest, make_image_folder, run_cli, write_image

FAST = ["--train.steps", "2", "--train.steps_per_epoch", "2", "--train.tensorboard", "false"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished smoke run, never modified: cases copy it."""
    out = tmp_path_factory.mktemp("bad") / "run"
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


# --------------------------------------------------------------------------- config values

CONFIG_CASES = [
    (["--train.lr", "0"], "train.lr"),
    (["--train.lr", "-1"], "train.lr"),
    (["--train.batch_size", "0"], "train.batch_size"),
    (["--train.steps_per_epoch", "0"], "train.steps_per_epoch"),
    (["--train.steps", "0"], "train.steps"),
    (["--algorithm.uratio", "0"], "algorithm.uratio"),
    (["--algorithm.threshold", "0"], "algorithm.threshold"),
    (["--algorithm.threshold", "1.5"], "algorithm.threshold"),
    (["--data.num_classes", "1"], "data.num_classes"),
    (["--model.image_size", "4"], "model.image_size"),
    (["--train.log_every", "0"], "train.log_every"),
    (["--seed", "-1"], "seed"),
    (["--train.schedule", "wavy"], "cosine, linear, constant"),
    (["--train.precision", "fp8"], "auto, fp32, bf16, fp16"),
    (["--algorithm.weighting", "magic"], "algorithm.weighting"),
    (["--model.head_init", "zeros"], "random, text"),
    (["--train.device", "tpu"], "train.device"),
    (["--algorithm.name", "nomatch"], "unknown algorithm"),
    (["--data.name", "imagenette"], "unknown dataset"),
    (["--model.peft", "lorax"], "unknown PEFT method"),
    (["--model.backbone", "ViT-X-99"], "unknown backbone"),
    (["--train.stepz", "5"], "train.steps"),  # suggests the right key
    (["--train.steps", "abc"], "expects int"),
    (["--train.steps"], "needs a value"),
    (["--data.strong_augment", "strongest"], "reference, wide"),
    (["--model.quick_gelu", "maybe"], "model.quick_gelu"),
    (["--train.accumulate", "3"], "multiple of"),
    (["--algorithm.pace", "slow"], "reference, smoothed, auto"),
    (["--data.labels_per_class", "-1"], "data.labels_per_class"),
    (["--data.labels_per_class", "0"], "no labeled image"),  # 0 needs data.extra_labels
    (["--model.pretrained", "/nonexistent/weights.pt"], "does not exist"),
    (["--train.betas", "a,b"], "train.betas"),
    (["--data.classes", "0"], "at least two"),
    (["--data.classes", "class_0,nosuch"], "nosuch"),
    (["--algorithm.teacher", "runs/x"], "only used by algorithm.name semikd"),
    (["--algorithm.smoothing", "1"], "algorithm.smoothing"),
    (["--train.loggers", "comet"], "csv, mlflow, wandb"),
    (["--train.optimizer", "lbfgs"], "sgd, adamw"),
    (["--data.split", "last"], "random, first"),
    (["--algorithm.pace_momentum", "1"], "algorithm.pace_momentum"),
    (["--model.vpt_tokens", "0"], "model.vpt.tokens"),  # the old flat key names the new one
    (["--model.lora.rank", "0"], "model.lora.rank"),
    (["--model.lorax.rank", "2"], "model.lora"),
]


@pytest.mark.parametrize("overrides, message", CONFIG_CASES,
                         ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_bad_config_values_fail_before_anything_is_written(capsys, tmp_path, overrides, message):
    out = tmp_path / "new"
    err = run_cli(capsys, ["train", "--preset", "smoke", "--output", out, *FAST, *overrides])
    assert message in err
    assert not out.exists()  # nothing created


@pytest.mark.parametrize("argv, message", [
    (["train", "--preset", "nonexistent"], "unknown preset"),
    (["train", "--config", "missing.yaml"], "does not exist"),
    (["train"], "choose a configuration"),
    (["train", "--preset", "smoke", "--config", "x.yaml"], "not both"),
])
def test_bad_configuration_choice(capsys, argv, message):
    assert message in run_cli(capsys, argv)


def test_malformed_yaml_names_file_and_line(capsys, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  backbone: tiny-vit\n  peft: [vpt-deep\ntrain: {}\n")
    err = run_cli(capsys, ["train", "--config", config, "--output", tmp_path / "o"])
    assert f"{config}:" in err and "malformed YAML" in err


def test_yaml_that_is_not_a_mapping(capsys, tmp_path):
    config = tmp_path / "list.yaml"
    config.write_text("- a\n- b\n")
    assert "mapping" in run_cli(capsys, ["train", "--config", config])


# --------------------------------------------------------------------------- CLI flags


@pytest.mark.parametrize("argv, message", [
    (["predict", "--run", "RUN", "IMG", "--top-k", "0"], "--top-k"),
    (["predict", "--run", "RUN", "IMG", "--batch-size", "-1"], "--batch-size"),
    (["predict", "--run", "RUN", "IMG", "--workers", "x"], "--workers"),
    (["label", "--run", "RUN", "IMG", "--threshold", "1.5"], "--threshold"),
    (["label", "--run", "RUN", "IMG", "--max-per-class", "0"], "--max-per-class"),
    (["bench", "--preset", "smoke", "--steps", "0"], "--steps"),
])
def test_bad_flags(capsys, run, image, argv, message):
    argv = [str(run) if a == "RUN" else str(image) if a == "IMG" else a for a in argv]
    assert message in run_cli(capsys, argv)


@pytest.mark.parametrize("argv, message", [
    (["predict", "--run", "NORUN", "IMG"], "not a finessl run"),
    (["predict", "--run", "RUN", "MISSING"], "does not exist"),
    (["predict", "--run", "RUN", "EMPTY"], "no images found"),
    (["predict", "--run", "RUN", "IMG", "--out", "NODIR/p.csv"], "does not exist"),
    (["predict", "--run", "RUN", "IMG", "--out", "IMG/p.csv"], "does not exist"),
    (["export", "--run", "RUN", "--out", "NODIR/m.pt"], "does not exist"),
    (["label", "--run", "RUN", "IMG", "--out", "NODIR/l.csv"], "does not exist"),
    (["eval", "--run", "NORUN"], "not a finessl run"),
    (["report", "--run", "NORUN"], "metrics.jsonl"),
])
def test_missing_paths(capsys, run, image, tmp_path, argv, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    names = {"RUN": run, "NORUN": tmp_path / "none", "IMG": image, "MISSING": tmp_path / "x.png",
             "EMPTY": empty}
    argv = [str(names.get(a, a)).replace("NODIR", str(tmp_path / "nodir")) for a in argv]
    before = digest(run)
    assert message in run_cli(capsys, argv)
    assert digest(run) == before


def test_eval_keeps_its_metrics_when_eval_json_cannot_be_written(capsys, run):
    (run / RunDir.EVAL).mkdir()  # a folder where the file should go
    assert main(["eval", "--run", str(run)]) == 0
    captured = capsys.readouterr()
    assert "top1" in captured.out and "Traceback" not in captured.err


# --------------------------------------------------------------------------- images


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A valid PNG header claiming side x side pixels (a decompression bomb), few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data +
                zlib.crc32(kind + data).to_bytes(4, "big"))

    header = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
                     chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))
    return path


def test_predict_skips_a_decompression_bomb_and_a_corrupt_file(capsys, run, image, tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "p.csv"
    err = run_cli(capsys, ["predict", "--run", run, image, bomb, broken, "--out", out], code=0)
    assert "2 file(s) could not be read" in err and "too large" in err
    assert len(out.read_text().splitlines()) == 2  # header + the one good image


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    from finessl.data.datasets import load_image

    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (64, 64, 3) and pixels.min() == 0 and pixels.max() == 255
    assert 100 < pixels.mean() < 155  # a ramp, not a white square


# --------------------------------------------------------------------------- damaged runs


def damage(run: Path, name: str, how: str) -> None:
    path = run / name
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00garbage" * 10)
    elif how == "yaml":
        path.write_text("model: {backbone: [unclosed\n")


@pytest.mark.parametrize("name, how, argv", [
    (RunDir.ADAPTER, "truncate", ["predict", "--run", "RUN", "IMG"]),
    (RunDir.ADAPTER, "garbage", ["eval", "--run", "RUN"]),
    (RunDir.ADAPTER, "garbage", ["export", "--run", "RUN", "--out", "OUT"]),
    (RunDir.CONFIG, "yaml", ["predict", "--run", "RUN", "IMG"]),
    (RunDir.CONFIG, "garbage", ["eval", "--run", "RUN"]),
    (RunDir.STATE, "garbage", ["train", "--resume", "RUN"]),
    (RunDir.STATE, "truncate", ["train", "--resume", "RUN"]),
    (RunDir.PREDICTIONS, "garbage", ["report", "--run", "RUN"]),
    (RunDir.FINAL, "garbage", ["report", "--run", "RUN"]),
])
def test_damaged_files_are_one_line_and_untouched(capsys, run, image, tmp_path, name, how, argv):
    damage(run, name, how)
    before = digest(run)
    names = {"RUN": run, "IMG": image, "OUT": tmp_path / "m.pt"}
    err = run_cli(capsys, [str(names.get(a, a)) for a in argv])
    assert "damaged" in err and name in err
    assert digest(run) == before


@pytest.mark.parametrize("edit, message", [
    ({"model": {"backbone": "tiny-resnet"}}, "backbone"),
    ({"model": {"init_seed": 7}}, "init_seed"),
    ({"model": {"peft": "bitfit"}}, "does not fit"),
    ({"model": {"vpt": {"tokens": 5}}}, "does not fit"),
])
def test_an_edited_config_is_detected(capsys, run, image, edit, message):
    import yaml

    config = yaml.safe_load((run / RunDir.CONFIG).read_text())
    for section, values in edit.items():
        config[section].update(values)
    (run / RunDir.CONFIG).write_text(yaml.safe_dump(config))
    before = digest(run)
    err = run_cli(capsys, ["predict", "--run", run, image])
    assert "damaged" in err and message in err
    assert digest(run) == before


def test_resume_with_an_edited_class_count_is_refused(capsys, run):
    import yaml

    config = yaml.safe_load((run / RunDir.CONFIG).read_text())
    config["data"]["synthetic"]["classes"] = 5
    config["train"]["steps"] = 8
    (run / RunDir.CONFIG).write_text(yaml.safe_dump(config))
    before = digest(run)
    assert "does not fit" in run_cli(capsys, ["train", "--resume", run])
    assert digest(run) == before


def test_state_from_another_run_is_refused(capsys, run, tmp_path):
    from finessl.config import apply_overrides, load_preset

    other = tmp_path / "other"
    finessl.train(apply_overrides(load_preset("smoke"), {"model.peft": "bitfit", "train.steps": "2",
                                                          "train.tensorboard": "false"}),
                  other, callbacks=[])
    shutil.copy(other / RunDir.STATE, run / RunDir.STATE)
    before = digest(run)
    assert "does not fit" in run_cli(capsys, ["train", "--resume", run, "--train.steps", "8"])
    assert digest(run) == before


# --------------------------------------------------------------------------- no pickle


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_malicious_legacy_state_pt_neither_runs_nor_loads(capsys, run, tmp_path):
    import pickle

    marker = tmp_path / "pwned.txt"
    (run / RunDir.STATE).unlink()
    (run / RunDir.LEGACY_STATE).write_bytes(pickle.dumps({"step": Payload(marker)}))
    before = digest(run)
    err = run_cli(capsys, ["train", "--resume", run])
    assert "pickle" in err and "never loads" in err
    assert not marker.exists()
    assert digest(run) == before


def test_a_crafted_state_file_cannot_construct_objects(capsys, run):
    from safetensors.torch import save_file

    crafted = {"format": "finessl-state-1",
               "state": json.dumps({"step": {"$tuple": [1]}, "rng": {"$tensor": "missing"}})}
    save_file({}, str(run / RunDir.STATE), metadata=crafted)
    before = digest(run)
    assert "damaged" in run_cli(capsys, ["train", "--resume", run])
    assert digest(run) == before


def test_no_module_loads_pickles():
    """Every loader in the package: no torch.load without weights_only=True, no pickle."""
    source = Path(finessl.__file__).parent
    for path in source.rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert "import pickle" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line}"


# --------------------------------------------------------------------------- run directory


def test_a_new_run_never_overwrites_a_finished_one(capsys, run):
    before = digest(run)
    err = run_cli(capsys, ["train", "--preset", "smoke", "--output", run, *FAST])
    assert "already holds a run" in err and "--resume" in err
    assert digest(run) == before


def test_deleting_the_state_does_not_free_the_folder(capsys, run):
    (run / RunDir.STATE).unlink()
    before = digest(run)
    assert "already holds a run" in run_cli(capsys, ["train", "--preset", "smoke", "--output", run])
    assert digest(run) == before


def test_resume_may_not_change_what_is_learned(capsys, run):
    before = digest(run)
    err = run_cli(capsys, ["train", "--resume", run, "--model.peft", "bitfit"])
    assert "model.peft cannot change on resume" in err
    assert digest(run) == before


def test_resume_with_a_preset_is_refused(capsys, run):
    before = digest(run)
    assert "own config" in run_cli(capsys, ["train", "--resume", run, "--preset", "smoke"])
    assert digest(run) == before


def test_a_locked_run_names_the_holder(capsys, run):
    import os

    before = digest(run)
    with RunDir(run).lock():
        err = run_cli(capsys, ["train", "--resume", run, "--train.steps", "8"])
    assert f"in use by process {os.getpid()}" in err
    assert digest(run) == before


@pytest.mark.parametrize("argv, message", [
    (["train", "--resume", "NONE"], "nothing to resume"),
    (["train", "--preset", "smoke", "--output", "FILE"], "not a folder"),
])
def test_run_directory_mistakes(capsys, tmp_path, argv, message):
    afile = tmp_path / "afile"
    afile.write_text("x")
    names = {"NONE": tmp_path / "none", "FILE": afile}
    assert message in run_cli(capsys, [str(names.get(a, a)) for a in argv])


def test_a_failed_start_leaves_no_folder(capsys, tmp_path):
    out = tmp_path / "new"
    err = run_cli(capsys, ["train", "--preset", "smoke", "--output", out, "--data.name", "folder",
                           "--data.root", tmp_path / "nowhere"])
    assert "does not exist" in err
    assert not out.exists()


def test_resume_drops_metrics_lines_after_the_checkpoint(capsys, run):
    lines = (run / RunDir.METRICS).read_text().splitlines()
    last = json.loads(lines[-1])["step"]
    torn = lines + [json.dumps({"kind": "train", "step": last + 1, "loss": 1.0}), '{"kind": "tr']
    (run / RunDir.METRICS).write_text("\n".join(torn) + "\n")
    run_cli(capsys, ["report", "--run", run], code=0)  # a torn last line is tolerated
    run_cli(capsys, ["train", "--resume", run, "--train.steps", "8"], code=0)
    steps = [r["step"] for r in RunDir(run).read_metrics() if r["kind"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


# --------------------------------------------------------------------------- data


def test_folder_dataset_problems(capsys, tmp_path):
    root = make_image_folder(tmp_path / "data")
    base = ["train", "--preset", "smoke", "--data.name", "folder", "--data.root", root, *FAST,
            "--output", tmp_path / "o"]
    (root / "labeled" / "cat" / "0.png").write_bytes(b"broken")
    assert "cannot be read" in run_cli(capsys, base)
    shutil.rmtree(root / "test")  # no test folder: trains with the estimate only (test_estimate)
    assert "test_dir" in run_cli(capsys, [*base, "--data.test_dir", tmp_path / "nope"])
    for image in (root / "labeled" / "cat").iterdir():
        image.unlink()
    assert "has no images" in run_cli(capsys, base)
    assert not (tmp_path / "o").exists()


def csv_files(tmp_path, rows, test_rows=None, bom=False):
    for i, (name, _) in enumerate(rows):
        write_image(tmp_path / name, i % 2, seed=i)
    prefix = "\ufeff" if bom else ""
    (tmp_path / "train.csv").write_text(prefix + "path,label\n" +
                                        "".join(f"{n},{label}\n" for n, label in rows), encoding="utf-8")
    if test_rows is None:  # copies of two labeled images under other names: not training files
        test_rows = [(f"test_{n}", label) for n, label in rows if label][:2]
        for name, _ in test_rows:
            shutil.copy(tmp_path / name[len("test_"):], tmp_path / name)
    (tmp_path / "test.csv").write_text("".join(f"{n},{label}\n" for n, label in test_rows))
    return ["--data.name", "csv", "--data.csv", tmp_path / "train.csv", "--data.test_csv",
            tmp_path / "test.csv"]


def test_csv_labels_differing_in_case_are_an_error(capsys, tmp_path):
    rows = [(f"i{i}.png", "cat" if i % 2 else "Cat") for i in range(8)]
    argv = ["train", "--preset", "smoke", *FAST, "--output", tmp_path / "o", *csv_files(tmp_path, rows)]
    assert "differ only in case" in run_cli(capsys, argv)


def test_csv_with_a_bom_and_spaces_around_labels_trains(capsys, tmp_path):
    rows = [(f"i{i}.png", " dog " if i % 2 else "cat") for i in range(8)] + [("u.png", "")]
    argv = ["train", "--preset", "smoke", *FAST, "--data.labels_per_class", "2", "--output",
            tmp_path / "o", *csv_files(tmp_path, rows, bom=True)]
    run_cli(capsys, argv, code=0)
    meta = RunDir(tmp_path / "o").load_adapter()[1]
    assert meta["classes"] == ["cat", "dog"]  # no "path" class from the BOM, no " dog "


def test_report_with_mathtext_class_names(capsys, tmp_path):
    rows = [(f"i{i}.png", "$\\frac{$" if i % 2 else "50$ bill") for i in range(8)]
    argv = ["train", "--preset", "smoke", *FAST, "--data.labels_per_class", "2", "--output",
            tmp_path / "o", *csv_files(tmp_path, rows)]
    run_cli(capsys, argv, code=0)
    run_cli(capsys, ["report", "--run", tmp_path / "o"], code=0)
    assert (tmp_path / "o" / "report" / "index.html").is_file()


def test_corrupt_unlabeled_images_are_skipped_and_counted_with_workers(tmp_path):
    root = make_image_folder(tmp_path / "data", unlabeled=12)
    for i in (1, 5):
        (root / "unlabeled" / f"u{i}.jpg").write_bytes(b"not an image")
    out = tmp_path / "o"
    result = subprocess.run(
        [sys.executable, "-m", "finessl", "train", "--preset", "smoke", "--output", str(out),
         "--data.name", "folder", "--data.root", str(root), "--data.num_workers", "2",
         "--data.labels_per_class", "2", "--train.steps", "6", "--train.steps_per_epoch", "3",
         "--train.tensorboard", "false"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "skipping an unreadable unlabeled image" in result.stderr
    final = RunDir(out).read_final()
    assert final["skipped_images"] > 0 and final["steps"] == 6


def test_an_unexpected_error_is_one_line_with_a_debug_hint(capsys, monkeypatch):
    import finessl.cli as cli

    monkeypatch.setattr(cli, "cmd_presets", lambda args, overrides: 1 / 0)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["presets"].set_defaults(func=lambda a, o: 1 / 0)
    err = run_cli(capsys, ["presets"], code=1)
    assert "ZeroDivisionError" in err and "FINESSL_DEBUG=1" in err
