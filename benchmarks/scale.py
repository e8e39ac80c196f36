"""Whole-pool commands on large image folders: wall time, images/s and peak memory.

Builds folders of N PNG files (28 x 28: Fashion-MNIST training images, then generated
ones, 100,000 distinct files at most; larger pools repeat them as hard links), trains the
smoke preset's tiny model once, then runs each command in a fresh process and reads that
process's peak RSS (``wait4``; image-decoding workers not counted):

* ``startup``  listing the folder (``collect_images``) and nothing else;
* ``predict``, ``label``  the whole pool to a CSV;
* ``suggest``  each strategy; the first run scores the pool, the others reuse its kept
  shards (``--keep-shards``), so their figures are the selection alone;
* ``audit``    ``finessl audit`` on the pool (above 100 k images its rows wait on disk);
* ``resume``   ``label`` interrupted (SIGINT) half way, then run again: the second run
  skips the finished shards and its CSV must equal the uninterrupted one;
* ``torchrun`` ``predict`` with two processes (gloo): the CSV must equal one process's.

``--code DIR`` runs another checkout's ``src`` (e.g. a worktree of an older commit) for
"before" figures; commands it does not have are skipped.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/scale.py --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from open_set_data import fashion_mnist  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DISTINCT = 100_000
STRATEGIES = ["random", "entropy", "margin", "balanced", "kcenter", "typiclust", "probcover", "auto"]


def distinct_images(folder: Path, count: int = DISTINCT) -> Path:
    """``count`` distinct small PNG files (made once; a larger set serves smaller pools)."""
    done = folder / "done"
    if done.is_file() and int(done.read_text() or 0) >= count:
        return folder
    (train_x, _), _ = fashion_mnist()
    rng = np.random.default_rng(0)
    for k in range(count):
        pixels = train_x[k] if k < len(train_x) else \
            np.clip(rng.normal(128, 60, (28, 28)), 0, 255).astype(np.uint8)
        path = folder / f"{k // 10000:02d}" / f"{k:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    done.write_text(str(count))
    return folder


def pool_folder(root: Path, size: int) -> Path:
    """A folder of ``size`` images: hard links to the distinct ones, 10,000 per sub-folder."""
    folder = root / f"pool-{size}"
    if (folder / ".done").is_file():
        return folder
    distinct = min(size, DISTINCT)
    source = distinct_images(root / "distinct", distinct)
    for k in range(size):
        target = folder / f"{k // 10000:03d}" / f"{k:07d}.png"
        if k % 10000 == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
        d = k % distinct
        if not target.exists():
            os.link(source / f"{d // 10000:02d}" / f"{d:06d}.png", target)
    (folder / ".done").write_text("ok")
    return folder


LAUNCHER = """import resource, runpy, sys
try:
    if sys.argv[1] == "--list":  # start-up alone: list the pool, decode nothing
        import time
        from finessl.inference import collect_images
        began = time.time()
        print("LISTED", len(collect_images([sys.argv[2]])), time.time() - began)
    else:
        sys.argv = ["finessl", *sys.argv[1:]]
        runpy.run_module("finessl", run_name="__main__")
finally:
    print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def audit_root(root: Path, pool: Path) -> Path:
    """A folder dataset for the audit: 2 classes x 4 labeled images, the pool as unlabeled."""
    folder = root / f"audit-data-{pool.name}"
    source = distinct_images(root / "distinct", 8)
    for c in range(2):
        labeled = folder / "labeled" / f"c{c}"
        labeled.mkdir(parents=True, exist_ok=True)
        for i in range(4):
            target = labeled / f"{i}.png"
            if not target.exists():
                os.link(source / "00" / f"{4 * c + i:06d}.png", target)
    if not (folder / "unlabeled").exists():
        (folder / "unlabeled").symlink_to(pool.resolve())
    return folder


def same_labels(out: Path, work: Path, size: int) -> bool | None:
    """Whether a resumed ``label --threshold 0.5`` CSV equals the uninterrupted one: the
    uninterrupted ``label`` run's CSV if there is one, else the ``predict`` CSV filtered to
    confidence >= 0.5 (the same rows, formatted alike)."""
    label, predict = work / f"label-{size}.csv", work / f"predict-{size}.csv"
    if label.is_file():
        return out.read_bytes() == label.read_bytes()
    if not predict.is_file():
        return None
    def clear(rows):  # a confidence printed as 0.500000 may lie on either side of the threshold
        return [r[:3] for r in rows if r[2] != "0.500000"]

    with predict.open(newline="") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0]] + [r for r in rows[1:] if float(r[2]) >= 0.5]
    with out.open(newline="") as handle:
        return clear(csv.reader(handle)) == clear(kept)


def run(command: list[str], code: Path, interrupt_when=None, launch: bool = True) -> dict:
    """Runs a finessl command from ``code``'s ``src`` in a fresh process (through a launcher
    that reports the process's own peak RSS); SIGINT once ``interrupt_when()`` is true."""
    env = {**os.environ, "PYTHONPATH": str(code / "src"), "HF_HUB_OFFLINE": "1"}
    began = time.time()
    argv = [sys.executable, *(["-c", LAUNCHER] if launch else []), *command]
    # A background shell starts its jobs with SIGINT ignored, and Python then never turns it
    # into KeyboardInterrupt: give the command the default handling back.
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    interrupted = False
    if interrupt_when is not None:
        while process.poll() is None and not interrupt_when():
            time.sleep(0.5)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            interrupted = True
    out, err = process.communicate()
    peak = [int(line.split()[1]) / 1024 for line in err.splitlines() if line.startswith("PEAK_KIB")]
    return {"seconds": time.time() - began, "peak_mib": peak[-1] if peak else float("nan"),
            "rc": process.returncode, "stdout": out[-2000:], "stderr": err[-3000:],
            "interrupted": interrupted}


def table(rows: list[dict], labels: list[str] | None = None) -> str:
    """Markdown: one row per label and command (``labels`` in that order, by default every
    label in the order first recorded), a column per pool size (the latest figure of each)."""
    latest = {(r["label"], r["size"], r["command"]): r for r in rows}
    sizes = sorted({r["size"] for r in rows})
    commands = list(dict.fromkeys(r["command"] for r in rows))
    head = "| command | " + " | ".join(f"{s:,}: s, img/s, peak MiB" for s in sizes) + " |"
    lines = [head, "|---|" + "---:|" * len(sizes)]
    for label in labels or dict.fromkeys(r["label"] for r in rows):
        for command in commands:
            cells = []
            for size in sizes:
                r = latest.get((label, size, command))
                if r is None:
                    cells.append("")
                    continue
                whole = r.get("scored", True) and "interrupted" not in command and "resumed" not in command
                rate = f"{r['images_per_s']:,}" if r.get("images_per_s") and whole else "-"
                peak = f"{r['peak_mib']:,}" if r.get("peak_mib") else "-"
                flag = "" if r["rc"] in (0, None) or command == "label interrupted" else f" (rc {r['rc']})"
                cells.append(f"{r['seconds']:,.1f} / {rate} / {peak}{flag}")
            if any(cells):
                lines.append(f"| {label}: {command} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--folder", type=Path, default=Path("runs/scale"))
    parser.add_argument("--commands", nargs="+", default=["startup", "predict", "label", "suggest",
                                                           "audit", "resume", "torchrun"])
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("--audit-up-to", type=int, default=100_000, help="largest pool audited")
    parser.add_argument("--torchrun-size", type=int, default=10_000)
    parser.add_argument("--resume-size", type=int, default=None, help="default: the largest size")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose src/ is run")
    parser.add_argument("--label", default="after", help="name of this set of figures")
    parser.add_argument("--workers", default="1")
    parser.add_argument("--batch-size", default="256")
    parser.add_argument("--record", type=Path, default=Path("runs/scale/results.jsonl"))
    parser.add_argument("--doc", action="store_true", help="print the recorded figures as a table")
    parser.add_argument("--write", type=Path, help="with --doc: also into this file's --section")
    parser.add_argument("--section", default="scale", help="the marked section --write replaces")
    parser.add_argument("--labels", nargs="+", help="with --doc: these labels, in this order")
    args = parser.parse_args()
    if args.doc:
        text = table([json.loads(line) for line in args.record.read_text().splitlines()], args.labels)
        print(text)
        if args.write:
            from harness import write_section

            write_section(args.write, args.section, text + "\n")
        return
    streaming = (args.code / "src" / "finessl" / "pool_pass.py").is_file()
    args.folder.mkdir(parents=True, exist_ok=True)
    model = args.folder / f"run-{args.label}"  # trained by the code measured (its config keys)
    if not (model / "adapter.safetensors").is_file():
        result = run(["train", "--preset", "smoke", "--output", str(model)], args.code)
        assert result["rc"] == 0, result["stderr"]
    work = args.folder / f"out-{args.label}"
    work.mkdir(exist_ok=True)
    common = ["--batch-size", args.batch_size, "--workers", args.workers]
    startup: dict[int, float] = {}  # size -> seconds of the start-up alone

    def record(size: int, command: str, result: dict, **extra) -> None:
        # images/s after the interpreter, torch and the model are loaded (the start-up row)
        net = result["seconds"] - startup.get(size, 0.0)
        row = {"label": args.label, "size": size, "command": command,
               "seconds": round(result["seconds"], 1),
               "images_per_s": round(size / net) if command != "startup" and net > 0 else None,
               "peak_mib": round(result["peak_mib"]) if result["peak_mib"] == result["peak_mib"] else None,
               "rc": result["rc"], **extra, "date": time.strftime("%Y-%m-%d")}
        print(json.dumps(row), flush=True)
        if result["rc"] not in (0, None) and not result.get("interrupted"):
            print(result["stderr"], file=sys.stderr)
        with args.record.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    for size in args.sizes:
        began = time.time()
        pool = pool_folder(args.folder, size)
        print(f"pool of {size:,} images ready ({time.time() - began:.0f} s)", flush=True)
        if "startup" in args.commands:
            result = run(["--list", str(pool)], args.code)
            _, listed, seconds = result["stdout"].split()
            record(size, "startup", result, listing_s=round(float(seconds), 1), listed=int(listed))
            startup[size] = result["seconds"] - float(seconds)  # interpreter + imports
        if "predict" in args.commands:
            out = work / f"predict-{size}.csv"
            record(size, "predict", run(["predict", "--run", str(model), str(pool), "--out", str(out),
                                              *common], args.code))
        if "label" in args.commands:
            out = work / f"label-{size}.csv"
            record(size, "label", run(["label", "--run", str(model), str(pool), "--threshold", "0.5",
                                            "--out", str(out), *common], args.code))
        if "suggest" in args.commands:
            out = work / f"suggest-{size}.csv"
            for k, strategy in enumerate(args.strategies):
                keep = ["--keep-shards"] if streaming and k < len(args.strategies) - 1 else []
                result = run(["suggest", "--run", str(model), str(pool), "--budget", "100",
                                   "--strategy", strategy, "--out", str(out), *common, *keep], args.code)
                record(size, f"suggest {strategy}", result,
                       scored=(k == 0 or not streaming))
        if "audit" in args.commands and size <= args.audit_up_to:
            out = work / f"audit-{size}"
            root = audit_root(args.folder, pool)
            record(size, "audit", run(["audit", "--preset", "smoke", "--data.name", "folder",
                                       "--data.root", str(root), "--data.labels_per_class", "none",
                                       "--out", str(out), "--batch-size", args.batch_size,
                                       "--workers", args.workers], args.code))
    if "resume" in args.commands and streaming:
        size = args.resume_size or max(args.sizes)
        pool = pool_folder(args.folder, size)
        out = work / f"label-resumed-{size}.csv"
        parts = Path(str(out) + ".parts")
        shards = -(-size // 10_000)

        def half_done() -> bool:
            return len(list(parts.glob("shard-*.safetensors"))) >= shards // 2

        command = ["label", "--run", str(model), str(pool), "--threshold", "0.5", "--out", str(out), *common]
        first = run(command, args.code, interrupt_when=half_done)
        kept = len(list(parts.glob("shard-*.safetensors")))
        second = run(command, args.code)
        record(size, "label interrupted", first, shards_kept=kept, of=shards,
               interrupted=first["interrupted"])
        record(size, "label resumed", second, shards_kept=kept,
               same_csv_as_uninterrupted=same_labels(out, work, size))
    if "torchrun" in args.commands and streaming:
        size = args.torchrun_size
        pool = pool_folder(args.folder, size)
        one, two = work / f"predict-{size}.csv", work / f"predict-torchrun-{size}.csv"
        if not one.is_file():
            run(["predict", "--run", str(model), str(pool), "--out", str(one), *common], args.code)
        os.environ["OMP_NUM_THREADS"] = "1"  # two processes on two cores
        result = run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "finessl", "--",
                      "predict", "--run", str(model), str(pool), "--out", str(two), "--device", "cpu",
                      "--batch-size", args.batch_size, "--workers", "0"], args.code, launch=False)
        record(size, "predict torchrun x2", result,
               same_csv_as_one_process=two.is_file() and two.read_bytes() == one.read_bytes())


if __name__ == "__main__":
    main()
