"""Small on-disk datasets built inside tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, label: int, seed: int, size: int = 24) -> Path:
    rng = np.random.default_rng(seed)
    base = np.zeros((size, size, 3)) + np.array([label * 80, 120, 255 - label * 80])
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_image_folder(root: Path, classes=("cat", "dog"), per_class=4, unlabeled=6, test=2):
    for k, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / "labeled" / name / f"{i}.png", k, seed=100 * k + i)
        for i in range(test):
            write_image(root / "test" / name / f"{i}.png", k, seed=900 + 100 * k + i)
    for i in range(unlabeled):
        write_image(root / "unlabeled" / f"u{i}.jpg", i % len(classes), seed=500 + i)
    return root


def make_food101(root: Path, classes=("apple_pie", "sushi", "tacos"), train=5, test=2) -> Path:
    """torchvision's Food-101 layout: food-101/images/<class>/<id>.jpg and meta/{train,test}.json."""
    import json

    base = root / "food-101"
    meta = {"train": {}, "test": {}}
    for k, name in enumerate(classes):
        for split, count, offset in (("train", train, 0), ("test", test, 100)):
            ids = [f"{name}/{offset + i}" for i in range(count)]
            meta[split][name] = ids
            for rel in ids:
                write_image(base / "images" / f"{rel}.jpg", k, seed=hash(rel) % 1000)
    (base / "meta").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta[split]))
    return root


def make_semi_aves(root: Path, classes=3, labeled=3, unlabeled_in=4, unlabeled_out=3, test=2) -> Path:
    """The Semi-Aves release's lists: `relative/path.jpg label` per line."""
    lists = {"l_train_val.txt": [], "u_train_in.txt": [], "u_train_out.txt": [], "test.txt": []}
    for k in range(classes):
        for i in range(labeled):
            lists["l_train_val.txt"].append((f"trainval_images/{k}_{i}.jpg", k))
        for i in range(test):
            lists["test.txt"].append((f"test/{k}_{i}.jpg", k))
    for i in range(unlabeled_in):
        lists["u_train_in.txt"].append((f"u_train_in/{i}.jpg", None))
    for i in range(unlabeled_out):
        lists["u_train_out.txt"].append((f"u_train_out/{i}.jpg", None))
    for name, rows in lists.items():
        lines = []
        for j, (rel, label) in enumerate(rows):
            write_image(root / rel, label or 0, seed=j)
            lines.append(rel if label is None else f"{rel} {label}")
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def make_imagenet(root: Path, wnids=("n01440764", "n01443537"), train=10, val=2) -> Path:
    for k, wnid in enumerate(wnids):
        for i in range(train):
            write_image(root / "train" / wnid / f"{wnid}_{i}.JPEG", k, seed=i, size=16)
        for i in range(val):
            write_image(root / "val" / wnid / f"ILSVRC2012_val_{k}{i}.JPEG", k, seed=50 + i, size=16)
    return root


def make_stl10(root: Path, train=20, unlabeled=7, test=10) -> Path:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("unlabeled", unlabeled), ("test", test)):
        rng.integers(0, 255, (n, 3, 96, 96), dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(
        ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]))
    return root


def model_config(**values):
    """A ModelConfig from keys as the command line names them (``vpt_tokens=3`` works)."""
    from finessl.config import make_section

    return make_section("model", **values)


def algorithm_config(**values):
    """An AlgorithmConfig the same way (``flex_warmup=False``, ``name="softmatch"``)."""
    from finessl.config import make_section

    return make_section("algorithm", **values)


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (but the lock) and its SHA-256: to show nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def main_exit_code(argv) -> int:
    """``finessl ARGV`` in this process: its exit code (argparse's usage errors included)."""
    from finessl.cli import main

    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own usage errors
        return exit_.code


def run_cli(capsys, argv, code=2):
    """``finessl ARGV`` in this process; returns its stderr after the common checks: the exit
    code, no traceback, and (on failure) a message of one to three lines."""
    result = main_exit_code(argv)
    err = capsys.readouterr().err
    assert result == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(("finessl", "usage", "error"))
             or "error:" in line]
    if code != 0:
        assert 1 <= len(lines) <= 3, err
    return err


def trained_folder_run(base: Path, unlabeled: int, steps: int = 4):
    """A smoke-preset run on a cat/dog image folder (2 labels per class): (root, run, config)."""
    import finessl
    from finessl.config import apply_overrides, load_preset

    root = make_image_folder(base / "data", per_class=4, unlabeled=unlabeled)
    config = apply_overrides(load_preset("smoke"), {
        "data.name": "folder", "data.root": str(root), "data.labels_per_class": "2",
        "train.steps": str(steps), "train.steps_per_epoch": "2", "train.tensorboard": "false"})
    run = base / "run"
    finessl.train(config, run, callbacks=[])
    return root, run, config
