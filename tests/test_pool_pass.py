"""Whole-pool commands at scale: compact path lists, shard-by-shard predict / label /
suggest that resume after an interruption and split over torchrun ranks, selections from
on-disk rows equal to the in-memory ones, incremental class pace, bf16 on slow CPUs."""

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import finessl
from finessl.active.strategies import STRATEGIES, Pool
from finessl.algorithms.components import ClassPace
from finessl.cli import main
from finessl.data.datasets import IMAGE_EXTENSIONS, list_images
from finessl.data.path_list import PathList
from finessl.device import resolve_precision
from finessl.distributed import DistEnv
from finessl.inference import Predictor, confident_labels, load
from finessl.pool_pass import ShardStore
from finessl.rundir import RunDir

from helpers import write_image


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool-pass") / "run"
    finessl.train("smoke", out, callbacks=[])
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool-images") / "pool"
    for i in range(9):
        write_image(folder / f"sub{i % 2}" / f"img{i}.png", i % 2, seed=i)
    (folder / "sub0" / "broken.png").write_bytes(b"\x89PNG but not really")
    return folder


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


# --------------------------------------------------------------------------- path lists


def test_path_list_reads_slices_takes_and_joins_like_a_list():
    names = ["/a/b.png", "/a/é ü.jpg", "", "/x/" + "y" * 300 + ".png", "rel/z.png"]
    paths = PathList.of(names)
    assert len(paths) == 5 and list(paths) == names and paths == names
    assert [paths[i] for i in range(-5, 5)] == names + names
    assert paths[1:4] == names[1:4] and paths[::-2] == names[::-2]
    assert paths.take(np.array([4, 0, 0])) == [names[4], names[0], names[0]]
    assert paths.take(np.array([True, False, True, False, False])) == [names[0], names[2]]
    assert paths.take(np.array([], np.int64)) == []
    assert (paths + ["/more.png"]) == names + ["/more.png"]
    assert (["/first.png"] + paths) == ["/first.png"] + names
    with pytest.raises(IndexError):
        paths[5]
    # about one byte a character plus 8 per name, not two Python objects per file
    assert paths.nbytes == sum(len(n.encode()) for n in names) + 8 * len(names)


def test_listing_a_folder_gives_the_order_of_sorting_its_paths(tmp_path):
    root = tmp_path / "tree"
    for name in ["a/b/x.png", "a/b.png", "a/B.PNG", "a/b-c.jpg", "a/c.txt", "z.JPG", "é/1.webp",
                 "a/b/.hidden.png", "m.png/inner.png"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    os.symlink(root / "a" / "b", root / "a" / "link")  # a link to a folder is not followed
    expected = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir())
    listed = list_images(root)
    assert isinstance(listed, PathList) and list(listed) == [str(p) for p in expected]
    assert str(root / "a" / "link" / "x.png") not in list(listed)


# --------------------------------------------------------------------------- predict / label


def test_streamed_predict_equals_the_in_memory_prediction(run_dir, pool, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(run_dir), str(pool), "--top-k", "2", "--batch-size", "2",
                 "--shard-size", "3", "--workers", "0", "--out", str(out)]) == 0
    assert "1 file(s) could not be read" in capsys.readouterr().err
    assert not (tmp_path / "pred.csv.parts").exists()  # the shards go once the CSV is whole
    report = load(run_dir).predict(list(list_images(pool)), batch_size=5, top_k=2)
    rows = read_rows(out)
    assert rows[0] == ["path", "label", "confidence", "label_2", "confidence_2"]
    assert [r[0] for r in rows[1:]] == [p.path for p in report.predictions]  # in the pool's order
    for row, p in zip(rows[1:], report.predictions):
        assert row[1] == p.label and row[3] == p.top[1][0]
        assert float(row[2]) == pytest.approx(p.confidence, abs=2e-6)
    assert [os.path.basename(f) for f, _ in report.failed] == ["broken.png"]


class Interrupting:
    """Wraps ``Predictor.top_k_scorer``: counts the batches scored, Ctrl-C after ``stop_after``."""

    def __init__(self, monkeypatch, stop_after=None):
        self.batches, self.stop_after = 0, stop_after
        original = Predictor.top_k_scorer

        def wrapped(predictor, k):
            score = original(predictor, k)

            def counted(images):
                if self.stop_after is not None and self.batches == self.stop_after:
                    raise KeyboardInterrupt
                self.batches += 1
                return score(images)
            return counted
        monkeypatch.setattr(Predictor, "top_k_scorer", wrapped)


def test_an_interrupted_label_resumes_without_redoing_finished_shards(run_dir, pool, tmp_path,
                                                                      monkeypatch, capsys):
    args = ["label", "--run", str(run_dir), str(pool), "--threshold", "0", "--batch-size", "1",
            "--shard-size", "2", "--workers", "0"]
    whole = tmp_path / "whole.csv"
    assert main([*args, "--out", str(whole)]) == 0  # 10 files: 5 shards of 2, 9 readable
    out = tmp_path / "labels.csv"
    with monkeypatch.context() as patch:
        # in pool order sub0/broken.png, img0, img2, ...: shard 0 is broken + img0, shard 1
        # img2 + img4; the 4th batch (img6) begins shard 2, the 5th is interrupted
        Interrupting(patch, stop_after=4)
        assert main([*args, "--out", str(out)]) != 0
    parts = tmp_path / "labels.csv.parts"
    assert not out.exists() and sorted(p.name for p in parts.glob("shard-*")) == [
        "shard-000000.safetensors", "shard-000001.safetensors"]
    assert "run the same command again" in capsys.readouterr().err
    # another job (other options) never mixes its shards in
    other = [a if a != "2" else "3" for a in args]  # --shard-size 3
    assert main([*other, "--out", str(out)]) != 0
    assert "another job" in capsys.readouterr().err
    with monkeypatch.context() as patch:
        counter = Interrupting(patch)
        assert main([*args, "--out", str(out)]) == 0
    # 9 readable images, 3 in finished shards (shard 2's img6 is scored again)
    assert counter.batches == 9 - 3
    assert read_rows(out) == read_rows(whole) and not parts.exists()


def test_label_cap_keeps_each_class_most_confident_in_pool_order():
    rows = [(0, "a", 0.95), (1, "a", 0.99), (2, "b", 0.6), (3, "b", 0.91), (4, "a", 0.93),
            (5, "a", 0.99), (6, "b", float("nan")), (7, "a", 0.95)]
    assert confident_labels(iter(rows), 0.92, None) == [rows[i] for i in (0, 1, 4, 5, 7)]
    # two per class: a's 0.99s (1 and 5); of b only 3 passes 0.9; ties keep the earlier image
    assert confident_labels(iter(rows), 0.9, 2) == [rows[1], rows[3], rows[5]]
    assert confident_labels(iter(rows), 0.9, 3) == [rows[0], rows[1], rows[3], rows[5]]


def test_torchrun_with_two_processes_writes_the_same_csv_as_one(run_dir, pool, tmp_path):
    single, double = tmp_path / "one.csv", tmp_path / "two.csv"
    args = ["predict", "--run", str(run_dir), str(pool), "--top-k", "2", "--shard-size", "3",
            "--workers", "0", "--device", "cpu"]
    assert main([*args, "--out", str(single)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(30500 + os.getpid() % 1000), "-m", "finessl", "--", *args,
           "--out", str(double)]  # "--": torchrun would read --run as its own --run-path
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert double.read_text() == single.read_text()


def test_suggest_writes_its_pool_in_shards_and_cleans_up(run_dir, pool, tmp_path):
    out = tmp_path / "next.csv"
    assert main(["suggest", "--run", str(run_dir), str(pool), "--budget", "3", "--strategy", "margin",
                 "--shard-size", "4", "--workers", "0", "--out", str(out)]) == 0
    rows = read_rows(out)
    assert len(rows) == 4 and not (tmp_path / "next.csv.parts").exists()
    predictor = load(run_dir)
    report = predictor.predict(list(list_images(pool)), top_k=2)
    margin = {p.path: p.top[0][1] - p.top[1][1] for p in report.predictions}
    want = sorted(margin, key=lambda p: margin[p])[:3]  # smallest top-2 margins
    assert [r[0] for r in rows[1:]] == want


# --------------------------------------------------------------------------- selections from disk


def sharded(tmp_path, arrays: dict[str, np.ndarray], cuts: list[int]) -> ShardStore:
    """A store whose shard files hold the rows between ``cuts`` (uneven, one empty: as when
    unreadable images drop out of shards)."""
    edges = [0, *cuts, len(next(iter(arrays.values())))]
    store = ShardStore(tmp_path / "store", len(edges) - 1, 1, {})
    store.open(DistEnv())
    for k, (a, b) in enumerate(zip(edges, edges[1:])):
        store.write(k, {"positions": np.arange(a, b), **{n: v[a:b] for n, v in arrays.items()}}, [])
    return store


def test_rows_read_from_shards_equal_the_array(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 3)).astype(np.float16)
    rows = sharded(tmp_path, {"x": values}, [7, 7, 20, 49]).rows("x")
    assert rows.shape == (50, 3) and len(rows) == 50 and rows.dtype == np.float16
    for a, b in [(0, 50), (3, 9), (7, 20), (48, 60), (10, 10)]:
        assert np.array_equal(rows[a:b], values[a:b])
    index = rng.permutation(50)[:17]
    assert np.array_equal(rows[index], values[index])
    assert np.array_equal(np.asarray(rows, dtype=np.float32), values.astype(np.float32))


@pytest.mark.parametrize("strategy", ["random", "entropy", "margin", "kcenter", "balanced",
                                      "typiclust", "probcover", "auto"])
def test_every_strategy_picks_the_same_from_disk_as_from_memory(tmp_path, strategy):
    rng = np.random.default_rng(1)
    n, d, c = 2300, 160, 5  # above the 2,000 rows where coverage projects to 128 dimensions
    centres = rng.normal(size=(c, d))
    labels = rng.integers(c, size=n)
    features = (centres[labels] + 0.7 * rng.normal(size=(n, d))).astype(np.float16)
    logits = rng.normal(size=(n, c)) + 2 * np.eye(c)[labels]
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    store = sharded(tmp_path, {"features": features, "probs": probs}, [100, 1000, 1001, 2000])
    labeled = features[:10].astype(np.float32)
    dense = Pool(probs, features, labeled, np.linspace(0, 1, c))
    on_disk = Pool(store.rows("probs"), store.rows("features"), labeled, np.linspace(0, 1, c))
    choose = STRATEGIES.get(strategy)
    picked = choose(dense, 12, np.random.default_rng(3))
    assert len(picked) == 12
    assert choose(on_disk, 12, np.random.default_rng(3)) == picked


# --------------------------------------------------------------------------- bookkeeping


def test_class_pace_counts_kept_incrementally_equal_a_recount():
    rng = torch.Generator().manual_seed(0)
    pace = ClassPace(40, 4)
    for _ in range(30):
        index = torch.randint(0, 40, (12,), generator=rng)  # repeats included
        labels = torch.randint(0, 4, (12,), generator=rng)
        mask = torch.rand(12, generator=rng) > 0.3
        pace.update(index, labels, mask)
        chosen = pace.selected[pace.selected >= 0]
        assert pace.counts().tolist() == torch.bincount(chosen, minlength=4).tolist()
    restored = ClassPace(40, 4)
    restored.load_state_dict(pace.state_dict())
    assert "sigma" not in pace.state_dict()  # derived, so old checkpoints still load
    assert restored.counts().tolist() == pace.counts().tolist()
    pace.reset()
    assert pace.counts().tolist() == [0, 0, 0, 0]


def test_bf16_on_a_cpu_without_fast_bf16_falls_back_to_fp32(monkeypatch, caplog):
    cpu = torch.device("cpu")
    monkeypatch.setattr("finessl.device.cpu_has_fast_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="finessl.device"):
        assert resolve_precision("bf16", cpu) == "fp32"
    assert "no fast bf16" in caplog.text
    monkeypatch.setattr("finessl.device.cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32"


@pytest.mark.parametrize("when", ["off", "final", "every"])
def test_test_predictions_are_written_when_asked_in_float16(tmp_path, when):
    out = tmp_path / when
    assert main(["train", "--preset", "smoke", "--output", str(out), "--train.steps", "4",
                 "--train.steps_per_epoch", "2", "--train.tensorboard", "false",
                 "--train.test_predictions", when]) == 0
    saved = out / RunDir.PREDICTIONS
    assert saved.is_file() == (when != "off")
    if when != "off":
        from safetensors.numpy import load_file

        tensors = load_file(str(saved))
        assert tensors["logits"].dtype == np.float16 and len(tensors["labels"]) == len(tensors["logits"])
        logits, labels = RunDir(out).load_predictions()
        assert logits.dtype == torch.float32


_HEAP_PROBE = """
import sys
import numpy as np
from finessl.device import return_large_frees_to_the_os
applied = return_large_frees_to_the_os() if sys.argv[1] == "fixed" else None
def resident():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096
before = resident()
for _ in range(3):  # the first free of an 8 MiB buffer raises glibc's threshold by default
    block = np.ones(8 << 20, np.uint8)
    del block
print(applied, resident() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_whole_pool_commands_give_large_freed_buffers_back_to_the_os():
    """By default glibc keeps a freed 8 MiB buffer in its heap once it has seen one; with
    the whole-pool commands' fixed threshold the memory goes back (RSS as before)."""
    # glibc's own defaults: no allocator settings from the environment
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}

    def probe(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], capture_output=True, text=True,
                             check=True, timeout=300, env=env).stdout.split()
        return out[0], int(out[1])

    applied, kept = probe("fixed")
    if applied != "True":
        pytest.skip("not glibc: mallopt is not there")
    _, kept_by_default = probe("default")
    assert kept_by_default >= 7 << 20  # the phenomenon this guards against
    assert kept < 2 << 20
