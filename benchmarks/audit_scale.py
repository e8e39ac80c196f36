"""``finessl audit`` on a large folder: wall time, images/s and peak memory.

Builds an image folder (6 task classes x 4 labeled images and 1,000 test images from
Fashion-MNIST; an unlabeled pool of N distinct PNG files: Fashion-MNIST training images,
then generated ones), then runs the audit command in a fresh process and reads its peak
RSS. The demo model (EfficientNet-Lite0 at 64 px) unless ``--set`` says otherwise.

    .venv/bin/python benchmarks/audit_scale.py --pool 100000 --folder runs/audit-scale
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from open_set_data import TASK, fashion_mnist  # noqa: E402


def build_folder(root: Path, pool: int, seed: int = 0) -> None:
    if (root / "done").is_file():
        return
    rng = np.random.default_rng(seed)
    (train_x, train_y), (test_x, test_y) = fashion_mnist()
    order = rng.permutation(len(train_x))
    for c, name in enumerate(TASK):
        folder = root / "labeled" / name.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for j, i in enumerate([i for i in order if train_y[i] == c][:4]):
            Image.fromarray(train_x[i]).save(folder / f"{j}.png")
        test = root / "test" / name.replace("/", "-")
        test.mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(np.flatnonzero(test_y == c)[: 1000 // len(TASK)]):
            Image.fromarray(test_x[i]).save(test / f"{j}.png")
    unlabeled = root / "unlabeled"
    for k in range(pool):
        folder = unlabeled / f"{k // 10000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        if k < len(order) - 24:
            pixels = train_x[order[24 + k]]
        else:  # beyond Fashion-MNIST: a distinct generated picture
            pixels = np.clip(rng.normal(128, 60, (28, 28)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{k}.png")
    (root / "done").write_text("ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--folder", type=Path, default=Path("runs/audit-scale"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workers", default="1")
    args = parser.parse_args()
    root = args.folder / f"data-{args.pool}"
    began = time.time()
    build_folder(root, args.pool)
    print(f"folder of {args.pool:,} unlabeled images ready ({time.time() - began:.0f} s)", flush=True)
    out = args.folder / f"audit-{args.pool}"
    command = [sys.executable, "-m", "finessl", "audit", "--preset", "demo", "--data.name", "folder",
               "--data.root", str(root), "--data.labels_per_class", "none", "--out", str(out),
               "--workers", args.workers, "--batch-size", "256",
               *[f"--{kv.split('=', 1)[0]}={kv.split('=', 1)[1]}" for kv in args.set]]
    began = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.time() - began
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if result.returncode != 0:
        print(result.stderr[-3000:])
        sys.exit(result.returncode)
    print(result.stdout)
    images = args.pool + 24 + 1000
    print(f"audit of {images:,} images: {seconds / 60:.1f} min wall, {images / seconds:.0f} images/s, "
          f"peak RSS {peak:,.0f} MiB (the largest process: the audit, its loader workers apart)")


if __name__ == "__main__":
    main()
