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

from finessl.active.strategies import FEATURE_ONLY, STRATEGIES, Pool
from finessl.active.suggest import Suggestion, SuggestionReport
from finessl.audit.audit import encoder
from finessl.audit.scan import scan
from finessl.config import Config
from finessl.data.augment import build_transforms
from finessl.data.datasets import FileImages
from finessl.data.extra_labels import item_id
from finessl.data.ssl_data import build_ssl_data
from finessl.errors import FinesslError
from finessl.inference import collect_images

log = logging.getLogger(__name__)


def cold_start(config: Config, budget: int, pool: Sequence[str | Path] | None = None,
               strategy: str = "auto", seed: int = 0, batch_size: int = 128, workers: int = 0,
               device: str = "auto", progress: Callable[[int], None] | None = None) -> SuggestionReport:
    """The ``budget`` images of ``pool`` (default: the configuration's training pool) to label
    first, most useful first."""
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

    def features_of(source, indices, report=None):
        return scan(encode, source, indices, transform, image_size, device_, batch_size, workers, report)

    labeled = features_of(data.source.train, data.labeled_indices)
    if pool:
        files = collect_images(pool)
        source = FileImages(files, np.full(len(files), -1))
        found = features_of(source, np.arange(len(files)), progress)
        names = [files[int(i)] for i in found.indices]
    else:
        own = np.setdiff1d(data.unlabeled_indices, data.labeled_indices)
        if len(own) == 0:
            raise FinesslError("the pool is empty; give images to choose from")
        found = features_of(data.source.train, own, progress)
        names = [item_id(config.data.name, data.source, int(i)) for i in found.indices]
    if len(found) == 0:
        raise FinesslError("no readable image in the pool")
    failed = [(files[i] if pool else item_id(config.data.name, data.source, i), why)
              for i, why in found.failed]
    scores = Pool(None, found.features, labeled.features if len(labeled) else None,
                  classes=len(data.classes))
    picks = choose(scores, budget, np.random.default_rng(seed))
    report = SuggestionReport(failed=failed, strategy=strategy, cold_start=True)
    for pick in picks:
        index = None if pool else int(found.indices[pick.index])
        report.suggestions.append(Suggestion(names[pick.index], "", pick.score, pick.reason, index))
    for path, reason in failed:
        log.warning("skipped %s: %s", path, reason)
    return report
