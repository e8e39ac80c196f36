"""``algorithm.ood``: pool images judged out of distribution are dropped before training.

At the start of a run the model (as it starts: pretrained, or warm-started) scores the
unlabeled pool with the audit's out-of-distribution score and estimates the share of
foreign images; the highest-scored images up to that share leave the pool. They then get
no weight in any unlabeled loss and move no class pace, margin, threshold or EMA — for
every algorithm, since none of them ever sees them. The dropped images are written to the
run directory (``ood_excluded.csv``) and read back on resume, so a resumed run trains on
exactly the same pool.

* ``none``   keep every image;
* ``filter`` drop the estimated share;
* ``auto``   drop it only when the estimated share is at least ``AUTO_MIN_SHARE``: when
             foreign images are most of the pool. Below that, dropping the estimated share
             cost FineSSL accuracy in the open-set benchmark (it also drops task images,
             and a clean pool's estimate is 0.1 or more); at 75 % foreign it gained
             (docs/results.md#open-set-pools).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from finessl.audit.audit import DEFAULT_SCORE
from finessl.audit.ood import ood_check
from finessl.audit.scan import scan
from finessl.data.ssl_data import SSLData

log = logging.getLogger(__name__)

OOD_RULES = ("none", "auto", "filter")
AUTO_MIN_SHARE = 0.5


@dataclass
class PoolFilter:
    excluded: np.ndarray  # source indices that leave the unlabeled pool
    scores: np.ndarray  # their OOD scores (same order)
    share: float  # the estimated share of foreign images in the pool


def judge_pool(encode, data: SSLData, rule: str, device: torch.device, batch_size: int = 128,
               seed: int = 0) -> PoolFilter:
    """Scores the pool with ``encode`` (images -> features) and decides what leaves it."""
    empty = PoolFilter(np.zeros(0, np.int64), np.zeros(0), 0.0)
    if rule == "none":
        return empty
    transform = data.transforms.test
    size = _image_size(data)
    labeled = scan(encode, data.source.train, data.labeled_indices, transform, size, device, batch_size,
                   on_disk=False)
    candidates = np.setdiff1d(data.unlabeled_indices, data.labeled_indices)
    pool = scan(encode, data.source.train, candidates, transform, size, device, batch_size,
                on_disk=False)  # one ood check over arrays
    if len(pool) == 0 or len(labeled) < 2:
        return empty
    labels = np.asarray([int(data.labeled.labels.get(int(i), data.source.train_targets[i]))
                         for i in labeled.indices])
    feats_l, feats_p = labeled.features.astype(np.float32), pool.features.astype(np.float32)
    classes = data.num_classes
    scores, share, _ = ood_check(DEFAULT_SCORE, np.concatenate([feats_l, feats_p]), len(feats_l),
                                 labels, classes, seed)
    count = int(round(share * len(pool)))
    if rule == "auto" and share < AUTO_MIN_SHARE:
        log.info("algorithm.ood auto: about %.0f %% of the pool looks out of distribution, under "
                 "%.0f %%: nothing dropped", 100 * share, 100 * AUTO_MIN_SHARE)
        count = 0
    order = np.argsort(-scores, kind="stable")[:count]
    log.info("algorithm.ood %s: about %.0f %% of the unlabeled pool looks out of distribution; "
             "%d image(s) dropped", rule, 100 * share, count)
    return PoolFilter(pool.indices[order], scores[order], share)


def _image_size(data: SSLData) -> int:
    sample = data.test[0][0]
    return int(sample.shape[-1]) if isinstance(sample, torch.Tensor) else 224
