"""Experiment trackers behind the callback: CSV always; MLflow (local file store) and W&B
(offline mode) where their packages are installed."""

import csv

import pytest

import finessl
from finessl.config import apply_overrides, load_preset


def run_with(tmp_path, loggers, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = apply_overrides(load_preset("smoke"), {"train.loggers": loggers, "train.steps": "4",
                                                    "train.steps_per_epoch": "2",
                                                    "train.tensorboard": "false"})
    out = tmp_path / "run"
    finessl.train(config, out, callbacks=[])
    return out


def test_csv_logger(tmp_path, monkeypatch):
    out = run_with(tmp_path, "csv", monkeypatch)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    train = [r for r in rows if r["kind"] == "train" and r["name"] == "loss"]
    evals = [r for r in rows if r["kind"] == "eval" and r["name"] == "top1"]
    assert [int(r["step"]) for r in train] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in evals] == [2, 4]


def test_mlflow_logger_writes_a_local_run(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    out = run_with(tmp_path, "mlflow", monkeypatch)
    client = mlflow.tracking.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("finessl")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["algorithm.name"] == "finessl"
    history = client.get_metric_history(run.info.run_id, "eval/top1")
    assert [m.step for m in history] == [2, 4]
    assert run.info.status == "FINISHED"


def test_wandb_logger_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    out = run_with(tmp_path, "wandb", monkeypatch)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
