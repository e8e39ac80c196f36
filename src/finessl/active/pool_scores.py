"""One pass over the pool for the strategies, shared by ``suggest`` and the cold start.

Which images (the files given, or the configuration's own unlabeled pool), what the model
says of each — features, and a trained run's probabilities — written shard by shard to
disk (``pool_pass``: resumable, split over torchrun ranks), and the name each pick gets
back (a path, or ``DATASET:INDEX`` for in-memory datasets).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from finessl.data.extra_labels import item_id
from finessl.data.ssl_data import SSLData
from finessl.distributed import DistEnv
from finessl.errors import FinesslError
from finessl.inference import ImageFiles, PoolImages, collect_images
from finessl.pool_pass import SHARD_SIZE, Scorer, ShardStore, pool_fingerprint, score_shards


@dataclass
class PoolChoice:
    """The images to choose from, as a dataset of ``(tensor, position, error)``."""

    dataset: Dataset
    fingerprint: str  # which images, in which order (part of the shards' job)
    name: Callable[[int], str]  # position -> path or DATASET:INDEX
    index: Callable[[int], int | None]  # position -> index into the training pool (own pool)


def pool_choice(pool: Sequence[str | Path] | None, data: SSLData, dataset_name: str, transform,
                image_size: int) -> PoolChoice:
    """The files, folders and CSV lists ``pool`` names, or by default the unlabeled pool of
    ``data`` minus what is labeled."""
    if pool:
        files = collect_images(pool)
        return PoolChoice(ImageFiles(files, transform, image_size), pool_fingerprint(files),
                          lambda position: files[position], lambda position: None)
    own = np.setdiff1d(data.unlabeled_indices, data.labeled_indices)
    if len(own) == 0:
        raise FinesslError("the unlabeled pool is empty; give images to choose from")
    digest = hashlib.blake2b(own.astype(np.int64).tobytes(), digest_size=16).hexdigest()
    return PoolChoice(PoolImages(data.source.train, own, transform, image_size),
                      f"own pool {len(own)}:{digest}",
                      lambda position: item_id(dataset_name, data.source, int(own[position])),
                      lambda position: int(own[position]))


def encoder_scorer(encode: Callable[[torch.Tensor], torch.Tensor]) -> Scorer:
    """Images -> unit-length features in float16 (a pretrained backbone, no head)."""
    def score(images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.nn.functional.normalize(encode(images).float(), dim=-1)
        return {"features": features.to(torch.float16), "finite": torch.isfinite(features).all(dim=-1)}

    return score


def score_pool(score: Scorer, device: torch.device, dataset: Dataset, folder: Path, job: dict,
               batch_size: int, workers: int, shard_size: int = SHARD_SIZE,
               env: DistEnv | None = None, progress: Callable[[int], None] | None = None) -> ShardStore:
    """``score`` of every image of ``dataset`` in the shards of ``folder`` (resumed if a killed
    run left some there), every rank its share."""
    store = ShardStore(folder, len(dataset), shard_size, job)
    score_shards(store, dataset, score, device, env or DistEnv(), batch_size, workers, progress)
    return store


def features_in_memory(score: Scorer, device: torch.device, dataset: Dataset, batch_size: int,
                       workers: int) -> np.ndarray | None:
    """The features of a small set (the labeled images), or None for an empty one."""
    if len(dataset) == 0:
        return None
    with tempfile.TemporaryDirectory(prefix="finessl-labeled-") as tmp:
        store = score_pool(score, device, dataset, Path(tmp), {}, batch_size, workers)
        return np.asarray(store.rows("features")) if store.positions().size else None
