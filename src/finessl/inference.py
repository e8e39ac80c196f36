"""Using a trained model: load a run, predict, auto-label an unlabeled pool, export.

A run directory is the base model's id (in ``config.yaml``) plus ``adapter.safetensors``;
``load`` rebuilds the base model and puts the trained weights on top. Unreadable images
are reported and counted, never fatal; a path that does not exist is an error.
"""

from __future__ import annotations

import csv
import heapq
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from finessl.config import Config, ModelConfig
from finessl.data.augment import build_transforms
from finessl.data.datasets import list_images, load_image
from finessl.data.extra_labels import resolve_listed
from finessl.data.path_list import PathList
from finessl.device import autocast_for, resolve_device, resolve_precision
from finessl.distributed import DistEnv
from finessl.errors import DataError, FinesslError
from finessl.models import build_backbone
from finessl.models.backbone_base import Backbone
from finessl.pool_pass import SHARD_SIZE, Scorer, ShardStore, file_fingerprint, pool_fingerprint, score_shards
from finessl.rundir import RunDir, atomic_write
from finessl.trained import rebuild

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    path: str
    label: str
    confidence: float
    top: list[tuple[str, float]]


@dataclass
class PredictionReport:
    predictions: list[Prediction] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


class ImageFiles(Dataset):
    """Images for inference: ``(tensor, position, "")``, or a placeholder and the reason
    for an unreadable file."""

    def __init__(self, paths: Sequence[str | Path], transform, image_size: int) -> None:
        self.paths, self.transform, self.image_size = PathList.of(paths), transform, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return self.transform(load_image(self.paths[index])), index, ""
        except DataError as error:
            return torch.zeros(3, self.image_size, self.image_size), index, str(error)


class PoolImages(Dataset):
    """Images of a training pool by index, test-transformed: ``(tensor, position, error)``
    (a placeholder and the reason for an unreadable one)."""

    def __init__(self, source: Dataset, indices, transform, image_size: int) -> None:
        self.source, self.indices, self.transform = source, np.asarray(indices), transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, position: int) -> tuple[object | None, str]:
        """(the untransformed image, "") or (None, why it cannot be read)."""
        try:
            image, _ = self.source[int(self.indices[position])]
            return image, ""
        except DataError as error:
            return None, str(error)

    def blank(self) -> torch.Tensor:
        return torch.zeros(3, self.image_size, self.image_size)

    def __getitem__(self, position: int):
        image, error = self.read(position)
        return (self.blank() if error else self.transform(image)), position, error


@dataclass
class Predictor:
    """A classifier with what it needs to read new images."""

    model: nn.Module  # images -> logits
    classes: list[str]
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    device: torch.device
    config: Config | None = None
    metadata: dict = field(default_factory=dict)
    source: str = ""  # which model this is (run folder and adapter file, or backbone)

    @property
    def transform(self):
        return build_transforms(self.image_size, self.mean, self.std).test

    def files(self, images: Sequence[str | Path]) -> Dataset:
        """``images`` as a dataset of ``(tensor, position, error)`` for ``pool_pass``."""
        return ImageFiles(images, self.transform, self.image_size)

    def autocast(self):
        """fp16 autocast on CUDA (inference needs no loss scaling), none elsewhere."""
        return autocast_for(resolve_precision("auto", self.device), self.device)()

    def top_k_scorer(self, k: int) -> Scorer:
        """Images -> the ``k`` most probable classes and their probabilities."""
        model = self.model.eval()
        if self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)

        def score(images: torch.Tensor) -> dict[str, torch.Tensor]:
            with self.autocast():
                probs = model(images).float().softmax(-1)
            values, indices = probs.nan_to_num(0.0).topk(min(k, probs.shape[1]), dim=-1)
            return {"top_prob": values, "top_index": indices.int(),
                    "finite": torch.isfinite(probs).all(dim=-1)}

        return score

    def predict(self, images: Sequence[str | Path], batch_size: int = 64, top_k: int = 1,
                workers: int = 0) -> PredictionReport:
        """Class, confidence and top-k classes per image; unreadable images go to ``failed``.
        All in memory: for large pools use ``predict_pool``, which writes as it goes."""
        paths = PathList.of(images)
        report = PredictionReport()
        with tempfile.TemporaryDirectory(prefix="finessl-predict-") as tmp:
            store = ShardStore(Path(tmp), len(paths), SHARD_SIZE, {})
            score_shards(store, self.files(paths), self.top_k_scorer(top_k), self.device, DistEnv(),
                         batch_size, workers)
            for position, top in iter_top_k(store, self.classes):
                report.predictions.append(Prediction(paths[position], top[0][0], top[0][1], top))
            report.failed = [(paths[p], reason) for p, reason in store.failures()]
        for path, reason in report.failed:
            log.warning("skipped %s: %s", path, reason)
        return report


def iter_top_k(store: ShardStore, classes: Sequence[str]) -> Iterator[tuple[int, list[tuple[str, float]]]]:
    """``(position, [(class, probability), ...])`` of every scored image, shard by shard."""
    for arrays, _ in store.shards():
        if not len(arrays["positions"]):
            continue
        for position, probs, indices in zip(arrays["positions"].tolist(), arrays["top_prob"].tolist(),
                                            arrays["top_index"].tolist()):
            yield position, [(classes[k], v) for k, v in zip(indices, probs)]


def predict_pool(predictor: Predictor, images: PathList, folder: Path, command: str, top_k: int = 1,
                 batch_size: int = 64, workers: int = 0, shard_size: int = SHARD_SIZE,
                 env: DistEnv | None = None, progress: Callable[[int], None] | None = None) -> ShardStore:
    """Scores ``images`` into the shards of ``folder`` (resuming what a killed run left),
    every rank its share; the returned store reads the results back in order."""
    env = env or DistEnv()
    job = {"command": command, "model": predictor.source, "pool": pool_fingerprint(images),
           "top_k": top_k}
    store = ShardStore(folder, len(images), shard_size, job)
    score_shards(store, predictor.files(images), predictor.top_k_scorer(top_k), predictor.device,
                 env, batch_size, workers, progress)
    return store


def load(run_dir: str | Path, device: str = "auto", backbone: nn.Module | None = None) -> Predictor:
    """A trained run (a folder, or ``hf-hub:USER/NAME``) as a Predictor: the model
    ``finessl.trained.rebuild`` makes, with what reading new images needs."""
    built = rebuild(run_dir, device, backbone)
    trained = built.trained
    adapter = trained.run.path / RunDir.ADAPTER
    return Predictor(built.model, built.classes, built.image_size, built.mean, built.std,
                     built.device, trained.config, trained.meta,
                     f"{trained.run.path.resolve()} {file_fingerprint(adapter)}")


class _PretrainedHead(nn.Module):
    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.pretrained_logits(images)


def pretrained_predictor(backbone: str, pretrained: str = "imagenet", device: str = "auto") -> Predictor:
    """A backbone's own ImageNet-1k classifier (timm CNNs such as EfficientNet-Lite0)."""
    from timm.data import ImageNetInfo

    model = build_backbone(ModelConfig(backbone=backbone, pretrained=pretrained, peft="linear"))
    if not hasattr(model, "pretrained_logits") or model.model.num_classes != 1000:
        raise FinesslError(f"backbone {backbone!r} has no ImageNet-1k classifier to predict with")
    info = ImageNetInfo()
    classes = [info.index_to_description(i) for i in range(1000)]
    target = resolve_device(device)
    head = _PretrainedHead(model).to(target).eval()
    return Predictor(head, classes, model.image_size, model.mean, model.std, target,
                     source=f"backbone {backbone} {pretrained}")


def collect_images(paths: Sequence[str | Path]) -> PathList:
    """Files as given, folders expanded to the images inside, ``.csv`` files read as lists
    (first column; a relative path is relative to the CSV, as in every list finessl reads).
    Every path comes back absolute, so lists written from it read the same anywhere; the
    list is compact (``PathList``) for pools of millions. A path that does not exist is an
    error."""
    found = PathList.of([])
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += list_images(Path(os.path.abspath(path)))
        elif path.is_file() and path.suffix.lower() == ".csv":
            found += PathList.of(os.path.abspath(p) for p in _csv_images(path))
        elif path.is_file():
            found += [os.path.abspath(path)]
        else:
            raise FinesslError(f"{str(path)!r} does not exist")
    if not found:
        raise FinesslError("no images found in the given paths")
    return found


def _csv_images(listing: Path) -> list[Path]:
    found = []
    try:
        with listing.open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.reader(handle):
                name = row[0].strip() if row else ""
                if name and name.lower() not in ("path", "image", "file", "filename", "id"):
                    found.append(resolve_listed(name, listing))
    except (UnicodeDecodeError, csv.Error, ValueError) as error:
        raise FinesslError(f"{listing} is not a readable UTF-8 CSV list of images "
                           f"({str(error)[:120]})") from None
    return found


def auto_label(report: PredictionReport, threshold: float = 0.0,
               max_per_class: int | None = None) -> list[Prediction]:
    """Keeps predictions at or above ``threshold``; at most ``max_per_class`` per class,
    the most confident first (in the order predicted)."""
    scored = ((i, p.label, p.confidence) for i, p in enumerate(report.predictions))
    return [report.predictions[i] for i, _, _ in confident_labels(scored, threshold, max_per_class)]


def confident_labels(scored: Iterator[tuple[int, str, float]], threshold: float,
                     max_per_class: int | None) -> list[tuple[int, str, float]]:
    """The ``(position, label, confidence)`` rows at or above ``threshold``, in position
    order; with ``max_per_class`` only each class's most confident (earlier first on ties),
    kept in one bounded heap per class — memory is the output, never the pool."""
    if max_per_class is None:
        return [row for row in scored if row[2] >= threshold]  # NaN never passes
    heaps: dict[str, list[tuple[float, int]]] = {}
    for position, label, confidence in scored:
        if not confidence >= threshold:
            continue
        heap = heaps.setdefault(label, [])
        entry = (confidence, -position)  # the smallest is the first to go: least confident, latest
        if len(heap) < max_per_class:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            heapq.heapreplace(heap, entry)
    kept = [(-neg, label, confidence) for label, heap in heaps.items() for confidence, neg in heap]
    return sorted(kept)


class _Normalised(nn.Module):
    """The exported graph: images in [0, 1] -> normalised -> the run's model -> logits."""

    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


EXPORT_FORMATS = ("pt2", "onnx")


def export(predictor: Predictor, out: str | Path, fmt: str = "pt2") -> Path:
    """A standalone model that needs no finessl: ``pt2`` (``torch.export``, load with
    ``torch.export.load(path).module()``) or ``onnx`` (the dynamo exporter; needs the
    ``onnx`` extra). Input: float images ``[N, 3, S, S]`` in [0, 1] (normalisation is part of
    the graph, N is dynamic); output: logits."""
    out = Path(out)
    if fmt not in EXPORT_FORMATS:
        raise FinesslError(f"unknown export format {fmt!r}; choose {' or '.join(EXPORT_FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as error:
            raise FinesslError("ONNX export needs the onnx extra: pip install 'finessl[onnx]'") from error
    wrapped = _Normalised(predictor.model.cpu(), predictor.mean, predictor.std).eval()
    size = predictor.image_size
    example = (torch.rand(2, 3, size, size),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    buffer = io.BytesIO()  # built in memory, then written by Python: a full disk is an OSError
    try:
        with torch.no_grad():
            if fmt == "pt2":
                program = torch.export.export(wrapped, example, dynamic_shapes=({0: batch},))
                torch.export.save(program, buffer)
            else:
                onnx_program = torch.onnx.export(wrapped, example, None, input_names=["images"],
                                                 output_names=["logits"], dynamic_shapes=({0: batch},),
                                                 dynamo=True, external_data=False)
                buffer.write(onnx_program.model_proto.SerializeToString())
    finally:
        predictor.model.to(predictor.device)
    try:
        atomic_write(out, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    except OSError as error:
        raise FinesslError(f"could not write {out}: {error.strerror or error}") from None
    return out
