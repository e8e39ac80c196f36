"""The first labels, before any training: ``finessl suggest --preset/--config --budget K``.

No model has been trained, so nothing is uncertain yet; what the first labels need is
images that are typical of the pool and spread over it. One pass of the configured
*pretrained* backbone over the pool (compact float16 features, as the audit's scan) and a
feature strategy (``auto`` = ``typiclust``; ``probcover``, ``kcenter``, ``random``) pick
them. Labels the configuration already has (``data.extra_labels``) count as covered; the
dataset's own seed labels are ignored (``data.labels_per_class`` 0), which is the point of
a cold start. The list has a ``path`` column and an empty ``label`` column to fill in;
``finessl train --data.labels_per_class 0 --data.extra_labels FILE`` then starts from it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from finessl.active.pool_scores import PoolImages, encoder_scorer, features_in_memory, pool_choice, score_pool
from finessl.active.strategies import FEATURE_ONLY, STRATEGIES, Pool
from finessl.active.suggest import SuggestionReport, named_report, shard_folder
from finessl.audit.audit import encoder
from finessl.config import Config
from finessl.data.augment import build_transforms
from finessl.data.ssl_data import build_ssl_data
from finessl.distributed import DistEnv
from finessl.errors import FinesslError
from finessl.pool_pass import SHARD_SIZE

log = logging.getLogger(__name__)


def cold_start(config: Config, budget: int, pool: Sequence[str | Path] | None = None,
               strategy: str = "auto", seed: int = 0, batch_size: int = 128, workers: int = 0,
               device: str = "auto", progress: Callable[[int], None] | None = None,
               folder: Path | None = None, shard_size: int = SHARD_SIZE,
               env: DistEnv | None = None) -> SuggestionReport | None:
    """The ``budget`` images of ``pool`` (default: the configuration's training pool) to label
    first, most useful first. The pool's features go to the shards of ``folder`` (default: a
    temporary folder), as in ``suggest``; under torchrun the main rank chooses (the others
    get None)."""
    env = env or DistEnv()
    choose = STRATEGIES.get(strategy)
    if strategy not in (*FEATURE_ONLY, "auto"):
        raise FinesslError(f"--strategy {strategy} needs a trained model (--run); without one "
                           f"choose {', '.join(FEATURE_ONLY)} or auto")
    if budget < 1:
        raise FinesslError("--budget must be at least 1")
    config = copy.deepcopy(config)
    config.data.labels_per_class = 0  # a cold start: only labels given as extra_labels count
    encode, image_size, mean, std, device_, _ = encoder(config, None, device)
    transform = build_transforms(image_size, mean, std).test
    data = build_ssl_data(config.data, image_size, mean, std, config.seed, strong_views=0,
                          check_files=False, need_labels=False)
    choice = pool_choice(pool, data, config.data.name, transform, image_size)
    score = encoder_scorer(encode)
    model = f"{config.model.backbone} {config.model.pretrained} {image_size}"
    with shard_folder(folder) as where:
        store = score_pool(score, device_, choice.dataset, where,
                           {"command": "cold start", "pool": choice.fingerprint, "model": model},
                           batch_size, workers, shard_size, env, progress)
        if not env.is_main:
            return None
        labeled = features_in_memory(score, device_, PoolImages(
            data.source.train, data.labeled_indices, transform, image_size), batch_size, workers)
        scores = Pool(None, store.rows("features"), labeled, classes=len(data.classes))
        picks = choose(scores, budget, np.random.default_rng(seed))
        return named_report(store, choice, picks, [""] * len(picks), strategy, cold_start=True,
                            classes=data.classes)
