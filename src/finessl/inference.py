"""Using a trained model: load a run, predict, auto-label an unlabeled pool, export.

A run directory is the base model's id (in ``config.yaml``) plus ``adapter.safetensors``;
``load`` rebuilds the base model and puts the trained weights on top. Unreadable images
are reported and counted, never fatal; a path that does not exist is an error.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from finessl.config import Config, ModelConfig
from finessl.data.augment import build_transforms
from finessl.data.datasets import list_images, load_image
from finessl.data.extra_labels import resolve_listed
from finessl.device import resolve_device
from finessl.errors import DataError, FinesslError
from finessl.models import build_backbone, build_model
from finessl.models.backbone_base import Backbone, ModuleBackbone
from finessl.rundir import RunDir, atomic_write

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


class _ImageFiles(Dataset):
    """Images for inference; an unreadable file yields a placeholder and its error."""

    def __init__(self, paths: Sequence[str | Path], transform, image_size: int) -> None:
        self.paths, self.transform, self.image_size = [str(p) for p in paths], transform, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return self.transform(load_image(self.paths[index])), self.paths[index], ""
        except DataError as error:
            return torch.zeros(3, self.image_size, self.image_size), self.paths[index], str(error)


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

    @property
    def transform(self):
        return build_transforms(self.image_size, self.mean, self.std).test

    @torch.no_grad()
    def predict(self, images: Sequence[str | Path], batch_size: int = 64, top_k: int = 1,
                workers: int = 0) -> PredictionReport:
        """Class, confidence and top-k classes per image; unreadable images go to ``failed``."""
        loader = DataLoader(_ImageFiles(images, self.transform, self.image_size),
                            batch_size=batch_size, num_workers=workers)
        report = PredictionReport()
        self.model.eval()
        for tensors, paths, errors in loader:
            ok = [i for i, e in enumerate(errors) if not e]
            report.failed += [(p, e) for p, e in zip(paths, errors) if e]
            if not ok:
                continue
            probs = self.model(tensors[ok].to(self.device)).float().softmax(-1).cpu()
            finite = torch.isfinite(probs).all(dim=-1).tolist()
            report.failed += [(paths[i], "the model gave non-finite scores") for i, f in zip(ok, finite)
                              if not f]
            values, indices = probs.topk(min(top_k, probs.shape[1]), dim=-1)
            for i, vals, idxs, good in zip(ok, values.tolist(), indices.tolist(), finite):
                if not good:
                    continue
                report.predictions.append(Prediction(
                    paths[i], self.classes[idxs[0]], vals[0],
                    [(self.classes[k], v) for k, v in zip(idxs, vals)]))
        for path, reason in report.failed:
            log.warning("skipped %s: %s", path, reason)
        return report


def load(run_dir: str | Path, device: str = "auto", backbone: nn.Module | None = None) -> Predictor:
    """Rebuilds a trained model from a run directory (base model + adapter weights).

    The config, the adapter's metadata and the rebuilt frozen model must agree; a run whose
    files were damaged or edited is an error naming what differs."""
    run = RunDir(run_dir)
    config = run.read_config()
    state, meta = run.load_adapter()
    if meta.get("user_backbone") and backbone is None:
        raise FinesslError("this run used a user-supplied backbone; pass it to load(backbone=...)")
    if backbone is None:
        backbone = build_backbone(config.model)
    elif not isinstance(backbone, Backbone):
        backbone = ModuleBackbone(backbone, meta["num_features"], meta["image_size"],
                                  meta["mean"], meta["std"])
    if backbone.num_features != meta["num_features"]:
        raise run.damaged(f"the backbone gives {backbone.num_features} features, the adapter "
                          f"expects {meta['num_features']}")
    # The heads come from the adapter file, so there is no need to embed class names again.
    model_config = dataclasses.replace(config.model, head_init="random")
    try:
        model = build_model(model_config, len(meta["classes"]), backbone=backbone)
    except FinesslError as error:
        raise run.damaged(f"config.yaml does not build its model ({error})") from None
    problem = model.adapter_mismatch(state, meta)
    if problem:
        raise run.damaged(f"adapter.safetensors and config.yaml disagree: {problem} (another run's "
                          "adapter, or an edited config)")
    model.load_state_dict(state, strict=False)
    target = resolve_device(device)
    model.to(target).eval()
    return Predictor(model, list(meta["classes"]), meta["image_size"], meta["mean"], meta["std"],
                     target, config, meta)


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
    return Predictor(head, classes, model.image_size, model.mean, model.std, target)


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to the images inside, ``.csv`` files read as lists
    (first column; a relative path is relative to the CSV, as in every list finessl reads).
    Every path comes back absolute, so lists written from it read the same anywhere. A path
    that does not exist is an error."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += list_images(path)
        elif path.is_file() and path.suffix.lower() == ".csv":
            found += _csv_images(path)
        elif path.is_file():
            found.append(path)
        else:
            raise FinesslError(f"{str(path)!r} does not exist")
    if not found:
        raise FinesslError("no images found in the given paths")
    return [Path(os.path.abspath(p)) for p in found]


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
    the most confident first."""
    kept, per_class = [], Counter()
    for prediction in sorted(report.predictions, key=lambda p: -p.confidence):
        if not prediction.confidence >= threshold:  # NaN never passes
            break
        if max_per_class is not None and per_class[prediction.label] >= max_per_class:
            continue
        per_class[prediction.label] += 1
        kept.append(prediction)
    return sorted(kept, key=lambda p: p.path)


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
