"""Small on-disk datasets built inside tests."""

from __future__ import annotations

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
