"""Engine: exact resume, interruption by signal, data streams, torchrun with two processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from finessl.config import apply_overrides, load_preset
from finessl.engine.callbacks import Callback
from finessl.engine.sampling import EpochSampler
from finessl.errors import TrainingInterrupted
from finessl.run import train
from finessl.rundir import RunDir

HERE = Path(__file__).parent


def smoke(**overrides):
    base = {"train.steps": "4", "train.steps_per_epoch": "3", "train.log_every": "1",
            "train.tensorboard": "false"}
    return apply_overrides(load_preset("smoke"), {**base, **overrides})


class StopAt(Callback):
    """Sends this process SIGTERM after a given step, like a scheduler pre-empting a job."""

    def __init__(self, step):
        self.at = step

    def on_step(self, step, logs):
        if step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_interrupted_and_resumed_run_equals_straight_run(tmp_path):
    train(smoke(), tmp_path / "straight", callbacks=[])
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(smoke(), tmp_path / "stopped", callbacks=[StopAt(2)])
    assert RunDir(tmp_path / "stopped").load_state()["step"] == 2
    final = train(smoke(**{"data.num_workers": "1"}), tmp_path / "stopped", callbacks=[],
                  resume=True)
    assert final["steps"] == 4

    a = load_file(tmp_path / "straight" / "adapter.safetensors")
    b = load_file(tmp_path / "stopped" / "adapter.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    sa = RunDir(tmp_path / "straight").load_state()["algorithm"]
    sb = RunDir(tmp_path / "stopped").load_state()["algorithm"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    straight = json.loads((tmp_path / "straight" / "final.json").read_text())
    assert straight["top1"] == final["top1"] and straight["ece"] == pytest.approx(final["ece"])


def test_sampler_shards_global_batches_and_skips_consumed_steps():
    full = list(EpochSampler(10, batch_size=4, steps=3, seed=0))
    ranks = [list(EpochSampler(10, 2, 3, 0, rank=r, world_size=2)) for r in range(2)]
    # step s of rank r = items [s*4 + r*2, s*4 + r*2 + 2) of the single-process stream
    for step in range(3):
        assert ranks[0][2 * step:2 * step + 2] + ranks[1][2 * step:2 * step + 2] == \
            full[4 * step:4 * step + 4]
    resumed = EpochSampler(10, 4, 3, 0)
    resumed.set_epoch(0, start_step=1)
    assert list(resumed) == full[4:]
    assert sorted(k % 10 for k in full[:10]) == list(range(10))  # a permutation first


def test_sigterm_on_a_real_process_then_resume(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "finessl", "train", "--preset", "smoke", "--output", str(out),
           "--train.steps", "100", "--train.steps_per_epoch", "100", "--train.log_every", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.is_file() or
                                      len(metrics.read_text().splitlines()) < 6):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "--resume" in err
    step = RunDir(out).load_state()["step"]
    assert 5 <= step < 100
    done = subprocess.run([sys.executable, "-m", "finessl", "train", "--resume", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "final.json").read_text())["steps"] == 100


def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000), str(HERE / "ddp_worker.py"), str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(out / "rank0.pt")
    rank1 = torch.load(out / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    final = json.loads((out / "final.json").read_text())
    assert final["world_size"] == 2 and final["steps"] == 4
    # The same weights evaluated by one process give exactly the sharded evaluation.
    single = subprocess.run([sys.executable, "-m", "finessl", "eval", "--run", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    again = json.loads((out / "eval.json").read_text())
    assert again["top1"] == final["top1"]
    assert again["ece"] == pytest.approx(final["ece"], abs=1e-6)
    assert np.allclose(again["per_class_acc"], list(final["per_class_acc"].values()))
