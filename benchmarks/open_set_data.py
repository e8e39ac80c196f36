"""Realistic pools built from offline data, with the truth kept aside (for the audit and
open-set benchmarks).

Fashion-MNIST with the protocol of Oliver et al. (NeurIPS 2018): six classes form the task
(4 labels each by default), and the unlabeled pool mixes in images of the four other
classes at a chosen share; or, as another source, scikit-learn's 8x8 digits upscaled to
28x28 plus noise and blank frames. Optionally: exact and re-encoded copies of test images
planted in the pool, a share of the seed labels flipped, a long-tailed pool. Everything is
written as PNG files and two CSV lists (``--data.name csv``), and ``truth.json`` says which
pool image is foreign, which copies were planted and which labels were flipped.

``held_out=True`` draws every image, the "test" images included, from Fashion-MNIST's
training split (never its test split): the data to choose constants on.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TASK = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal"]  # classes 0-5
FOREIGN = ["Shirt", "Sneaker", "Bag", "Ankle boot"]  # classes 6-9


@dataclass
class PoolSpec:
    mismatch: float = 0.5  # share of the pool from outside the task
    source: str = "classes"  # "classes" (the four other classes) or "digits" (another source)
    labels_per_class: int = 4
    pool_size: int = 3200
    test_size: int = 2000
    exact_copies: int = 0  # test images copied into the pool byte for byte
    reencoded_copies: int = 0  # ... resized by 1.25 and saved as JPEG (quality 75)
    flip: float = 0.0  # share of seed labels flipped to another task class
    imbalance: float = 1.0  # long-tailed pool: n_k ~ r^(-k/(C-1)) over the task classes
    seed: int = 0
    held_out: bool = False


def fashion_mnist(root: str = "data"):
    from finessl.config import DataConfig
    from finessl.data.datasets import fashion_mnist as load

    source = load(DataConfig(name="fashion-mnist", root=root), 0)
    train = source.train.data.numpy(), source.train.targets.numpy()
    test = source.test.data.numpy(), source.test.targets.numpy()
    return train, test


def other_source(count: int, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8 images from another source: upscaled digits, noise, blank frames."""
    from sklearn.datasets import load_digits

    digits = load_digits().images  # 8x8, values 0-16
    out = np.zeros((count, 28, 28), np.uint8)
    for i in range(count):
        kind = i % 3
        if kind == 0:
            digit = digits[rng.integers(len(digits))] / 16.0 * 255
            out[i] = np.asarray(Image.fromarray(digit.astype(np.uint8)).resize((28, 28), Image.BILINEAR))
        elif kind == 1:
            out[i] = rng.integers(0, 256, (28, 28))
        else:
            out[i] = np.full((28, 28), rng.integers(0, 256))
    return out


def build(spec: PoolSpec, out: Path, data_root: str = "data") -> dict:
    """Writes the dataset into ``out``; returns the truth (also ``out/truth.json``)."""
    rng = np.random.default_rng(spec.seed)
    (train_x, train_y), (test_x, test_y) = fashion_mnist(data_root)
    if spec.held_out:  # the "test" images come from the training split too, kept apart
        order = rng.permutation(len(train_x))
        test_x, test_y = train_x[order[:10000]], train_y[order[:10000]]
        train_x, train_y = train_x[order[10000:]], train_y[order[10000:]]
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    used: set[int] = set()

    def take(classes, count: int) -> np.ndarray:
        candidates = np.flatnonzero(np.isin(train_y, classes))
        candidates = np.setdiff1d(candidates, np.fromiter(used, int, len(used)))
        chosen = rng.choice(candidates, size=count, replace=False)
        used.update(chosen.tolist())
        return chosen

    def save(name: str, pixels: np.ndarray) -> str:
        Image.fromarray(pixels).save(images / name)
        return f"images/{name}"

    rows = []  # (path, label or "")
    labeled = np.concatenate([take([c], spec.labels_per_class) for c in range(len(TASK))])
    flips = rng.choice(len(labeled), size=int(round(spec.flip * len(labeled))), replace=False)
    flipped = []
    for j, i in enumerate(labeled):
        label = int(train_y[i])
        if j in flips:
            wrong = int(rng.choice([c for c in range(len(TASK)) if c != label]))
            flipped.append({"path": f"images/l{j}.png", "label": TASK[wrong], "true": TASK[label]})
            label = wrong
        rows.append((save(f"l{j}.png", train_x[i]), TASK[label]))
    test_ids = rng.choice(np.flatnonzero(test_y < len(TASK)), size=spec.test_size, replace=False)
    test_rows = [(save(f"t{j}.png", test_x[i]), TASK[int(test_y[i])]) for j, i in enumerate(test_ids)]
    planted = spec.exact_copies + spec.reencoded_copies
    foreign_count = int(round(spec.mismatch * spec.pool_size))
    task_count = spec.pool_size - foreign_count - planted
    weights = spec.imbalance ** (-np.arange(len(TASK)) / (len(TASK) - 1))
    per_class = np.floor(weights / weights.sum() * task_count).astype(int)
    per_class[0] += task_count - per_class.sum()
    pool_truth = []  # per pool image: its class name, or "foreign"
    for c, count in enumerate(per_class):
        for i in take([c], int(count)):
            rows.append((save(f"p{len(pool_truth)}.png", train_x[i]), ""))
            pool_truth.append(TASK[c])
    if spec.source == "classes":
        for i in take(list(range(len(TASK), 10)), foreign_count):
            rows.append((save(f"p{len(pool_truth)}.png", train_x[i]), ""))
            pool_truth.append("foreign")
    else:
        for pixels in other_source(foreign_count, rng):
            rows.append((save(f"p{len(pool_truth)}.png", pixels), ""))
            pool_truth.append("foreign")
    leaks = []
    copied = rng.choice(len(test_rows), size=planted, replace=False)
    for k, t in enumerate(copied):
        source_path = out / test_rows[t][0]
        if k < spec.exact_copies:
            name = f"p{len(pool_truth)}.png"
            (images / name).write_bytes(source_path.read_bytes())
            kind = "exact"
        else:
            picture = Image.open(source_path).resize((35, 35), Image.BILINEAR)
            name = f"p{len(pool_truth)}.jpg"
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=75)
            (images / name).write_bytes(buffer.getvalue())
            kind = "reencoded"
        rows.append((f"images/{name}", ""))
        pool_truth.append(test_rows[t][1])
        leaks.append({"path": str((out / "images" / name).resolve()),
                      "test_path": str(source_path.resolve()), "kind": kind})
    _write_csv(out / "train.csv", rows)
    _write_csv(out / "test.csv", test_rows)
    pool_paths = [str((out / p).resolve()) for p, label in rows if not label]
    truth = {"spec": asdict(spec), "classes": TASK, "pool": dict(zip(pool_paths, pool_truth)),
             "leaks": leaks, "flipped": [{**f, "path": str((out / f["path"]).resolve())} for f in flipped]}
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def digits_task(out: Path, labels_per_class: int = 4, test_size: int = 450, seed: int = 0) -> Path:
    """scikit-learn's 1,797 digits (8x8, upscaled to 28x28) as a ten-class task of its own:
    ``labels_per_class`` labeled images per class, ``test_size`` test images, the rest the
    unlabeled pool; written like ``build`` (``overrides(out)`` trains on it)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    test, rest = order[:test_size], order[test_size:]
    labeled = np.concatenate([rest[digits.target[rest] == c][:labels_per_class] for c in range(10)])
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)

    def save(i: int) -> str:
        pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels).resize((28, 28), Image.BILINEAR).save(images / f"{i}.png")
        return f"images/{i}.png"

    names = [str(k) for k in range(10)]
    rows = [(save(i), names[digits.target[i]]) for i in labeled]
    chosen = set(labeled.tolist())
    rows += [(save(i), "") for i in rest if i not in chosen]
    _write_csv(out / "train.csv", rows)
    _write_csv(out / "test.csv", [(save(i), names[digits.target[i]]) for i in test])
    return out


def _write_csv(path: Path, rows) -> None:
    path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))


def overrides(out: Path) -> dict[str, str]:
    """The configuration keys that train on a built dataset (the task's classes in order)."""
    return {"data.name": "csv", "data.csv": str(out / "train.csv"), "data.test_csv": str(out / "test.csv"),
            "data.labels_per_class": "none", "data.max_unlabeled": "none", "data.max_test": "none"}
