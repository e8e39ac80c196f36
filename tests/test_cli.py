"""The finessl command end to end (smoke preset), and one-line errors for bad input.

The run the module shares and ``--help`` go through a real ``python -m finessl`` process;
the other commands run ``main(argv)`` in this process (conftest's ``finessl`` fixture: the
same code, without paying a Python and torch start-up for each of them)."""

import csv
import json
import os
import subprocess
import sys

import pytest
from safetensors import safe_open

from helpers import make_image_folder, write_image


def finessl_process(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "finessl", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)



@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "smoke"
    result = finessl_process("train", "--preset", "smoke", "--output", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_train_writes_the_run_directory(smoke_run):
    for name in ("config.yaml", "metrics.jsonl", "final.json", "adapter.safetensors", "state.safetensors",
                 "test_predictions.safetensors"):
        assert (smoke_run / name).is_file(), name
    events = list((smoke_run / "tensorboard").glob("events.out.tfevents*"))
    assert events and events[0].stat().st_size > 100
    final = json.loads((smoke_run / "final.json").read_text())
    for key in ("top1", "balanced_acc", "ece", "steps", "seconds", "trainable_params"):
        assert key in final
    assert final["steps"] == 6 and 0 <= final["top1"] <= 100
    evals = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["kind"] == "eval"]
    assert [e["step"] for e in evals] == [3, 6]
    assert all({"step", "epoch", "top1", "balanced_acc"} <= set(e) for e in evals)

    with safe_open(str(smoke_run / "adapter.safetensors"), "pt") as handle:
        keys = set(handle.keys())
        meta = {k: json.loads(v) for k, v in handle.metadata().items()}
    assert keys == {"backbone.peft.vpt_deep.prompts", "head.weight", "head.scale",
                    "aux_head.weight", "aux_head.scale"}
    assert meta["backbone"] == "tiny-vit" and meta["pretrained"] == "none"
    assert meta["classes"] == [f"class_{k}" for k in range(4)]


def test_eval_reproduces_final_metrics(smoke_run, finessl_cli):
    result = finessl_cli("eval", "--run", str(smoke_run))
    assert result.returncode == 0, result.stderr
    final = json.loads((smoke_run / "final.json").read_text())
    again = json.loads((smoke_run / "eval.json").read_text())
    assert again["top1"] == pytest.approx(final["top1"])
    assert again["ece"] == pytest.approx(final["ece"], abs=1e-6)


def test_predict_writes_csv(smoke_run, tmp_path, finessl_cli):
    image = write_image(tmp_path / "some.png", 0, seed=1)
    folder = tmp_path / "more"
    write_image(folder / "a.png", 1, seed=2)
    out = tmp_path / "pred.csv"
    result = finessl_cli("predict", "--run", str(smoke_run), str(image), str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [str(image), str(folder / "a.png")]
    assert all(r["label"].startswith("class_") and 0 < float(r["confidence"]) <= 1 for r in rows)


def test_resume_finished_run_and_refuse_overwrite(smoke_run, finessl_cli):
    again = finessl_cli("train", "--preset", "smoke", "--output", str(smoke_run))
    assert again.returncode == 2 and "already holds a run" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "smok"], "unknown preset 'smok'"),
    (["train", "--preset", "smoke", "--model.backbone", "vit-tiny"], "unknown backbone"),
    (["train", "--preset", "smoke", "--model.peft", "lora2"], "unknown PEFT method"),
    (["train", "--preset", "smoke", "--algorithm.name", "fixmatc"], "unknown algorithm"),
    (["train", "--preset", "smoke", "--data.name", "imagenet-x"], "unknown dataset"),
    (["train", "--preset", "smoke", "--data.name", "folder", "--data.root", "/no/such/dir"],
     "does not exist"),
    (["train", "--preset", "smoke", "--model.backbone", "ViT-B-32", "--model.pretrained",
      "openai"], "could not load ViT-B-32 weights"),
    (["predict", "--run", "/no/such/run", "x.png"], "does not exist"),
])
def test_bad_input_is_one_line(args, message, tmp_path, finessl_cli):
    result = finessl_cli(*args, "--output", str(tmp_path / "out")) if args[0] == "train" else \
        finessl_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("finessl: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_empty_class_folder_is_one_line(tmp_path, finessl_cli):
    make_image_folder(tmp_path / "d")
    (tmp_path / "d" / "labeled" / "bird").mkdir()
    result = finessl_cli("train", "--preset", "smoke", "--data.name", "folder", "--data.root",
                     str(tmp_path / "d"), "--output", str(tmp_path / "o"))
    assert result.returncode == 2 and "has no images" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_and_presets():
    assert finessl_process("--help").returncode == 0
    listed = finessl_process("presets").stdout
    assert "smoke" in listed and "cifar100-n4" in listed
    from finessl.config import load_preset

    line = next(row for row in listed.splitlines() if row.startswith("demo "))
    assert line.split(None, 1)[1] == load_preset("demo").description


def test_a_reader_that_goes_away_is_no_error():
    """As ``finessl presets | head -1``: the reader is gone before finessl writes (its end of
    the pipe is closed first); exit 141 as for SIGPIPE, and no internal error."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "finessl", "presets"], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert result.returncode == 141 and result.stderr == "", result.stderr


VIT_PEFT = ["linear", "vpt-deep", "vpt-shallow", "vpt-last", "lora", "adapter", "adaptformer",
            "ssf", "bitfit", "full", "lora+vpt-deep"]
CNN_PEFT = ["bn-tuning", "ssf", "bitfit"]


@pytest.mark.parametrize("backbone, peft", [("tiny-vit", p) for p in VIT_PEFT] +
                         [("tiny-resnet", p) for p in CNN_PEFT])
def test_smoke_runs_with_every_peft(backbone, peft, tmp_path, finessl_cli):
    result = finessl_cli("train", "--preset", "smoke", "--output", str(tmp_path / "r"),
                     "--model.backbone", backbone, "--model.peft", peft, "--train.steps", "2",
                     "--train.steps_per_epoch", "2")
    assert result.returncode == 0, result.stderr
    final = json.loads((tmp_path / "r" / "final.json").read_text())
    assert final["steps"] == 2


def test_zeroshot_command(tmp_path, finessl_cli):
    result = finessl_cli("zeroshot", "--preset", "smoke", "--out", str(tmp_path / "zs.json"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "zs.json").read_text())
    assert 0 <= metrics["top1"] <= 100 and "zero-shot top1" in result.stdout
    refused = finessl_cli("zeroshot", "--preset", "smoke", "--model.backbone", "tiny-resnet",
                      "--model.peft", "bitfit")
    assert refused.returncode == 0  # CLIP ResNets have a text tower too


@pytest.mark.parametrize("extra", [
    ["--algorithm.name", "supervised"],
    ["--algorithm.name", "pseudolabel"],
    ["--algorithm.name", "fixmatch"],
    ["--algorithm.name", "flexmatch"],
    ["--algorithm.name", "freematch"],
    ["--algorithm.name", "softmatch"],
    ["--algorithm.name", "debiaspl"],
    ["--algorithm.name", "fixmatch", "--algorithm.bms", "true", "--algorithm.dls", "true"],
    ["--algorithm.name", "flexmatch", "--algorithm.bms", "true", "--algorithm.dls", "true",
     "--algorithm.weighting", "aux"],
])
def test_smoke_runs_with_every_algorithm(extra, tmp_path, finessl_cli):
    result = finessl_cli("train", "--preset", "smoke", "--output", str(tmp_path / "r"),
                     "--train.steps", "2", "--train.steps_per_epoch", "2", *extra)
    assert result.returncode == 0, result.stderr
    final = json.loads((tmp_path / "r" / "final.json").read_text())
    assert final["algorithm"] == extra[1] and final["steps"] == 2


def test_bench_command(finessl_cli):
    result = finessl_cli("bench", "--preset", "smoke", "--steps", "2", "--warmup", "1")
    assert result.returncode == 0, result.stderr
    assert "s/step" in result.stdout and "images/s" in result.stdout and "peak RSS" in result.stdout


def test_the_parser_names_every_strategy_and_imports_no_torch():
    """``--help`` builds the whole parser; it must not pay for torch (seconds per call)."""
    from finessl.active.strategies import STRATEGIES
    from finessl.cli import SUGGEST_STRATEGIES

    assert SUGGEST_STRATEGIES[0] == "auto"
    assert sorted(SUGGEST_STRATEGIES) == sorted(STRATEGIES.names())
    code = ("import sys; from finessl.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'sklearn', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=300)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
