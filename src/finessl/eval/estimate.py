"""How accurate is a model on images nobody labeled? Label-free accuracy estimators.

Every estimator reads the model's class probabilities on the unlabeled images (``pool``)
and, where it needs one, a *calibration* set with known labels that the run may use
(never the test set). With four labels per class the labeled images are memorised, so
their plain predictions say nothing; the calibration set is therefore the labeled images
under strong augmentation (``strong``), which the model has not seen in that form.

* ``confidence``: the mean top-class probability (assumes a calibrated model);
* ``temperature``: the same after a temperature fitted on the calibration set;
* ``atc``: average thresholded confidence (Garg et al., ICLR 2022): the share of pool
  images whose confidence passes the threshold that the calibration set passes as often as
  it is right;
* ``doc``: difference of confidences (Guillory et al., ICCV 2021): calibration accuracy
  minus the drop of mean confidence from the calibration set to the pool;
* ``agreement``: how often two heads that were trained differently (FineSSL's main and
  auxiliary heads) predict the same class (Jiang et al., ICLR 2022: disagreement tracks
  the error);
* ``capped-confidence``: ``confidence`` summed per predicted class, each class's share capped
  at its share of the labeled set: a model cannot be right on more images of a class than
  the pool holds, so confident mass piled onto one class (confirmation bias merging two
  classes) is not counted as right. Assumes the pool's classes are as frequent as the
  labeled set's; equal to ``confidence`` wherever no class is over-predicted;
* ``capped-recall``: with a pool prior given, the accuracy at the labeled set's class mix
  instead of the pool's (on a long-tailed pool the pool's accuracy is mostly its head
  classes'; a balanced test set weighs every class alike): each class's capped mass over its
  pool share, averaged with the labeled shares. Without a given prior, ``capped-confidence``;
* ``adjusted-confidence`` and ``adjusted-recall``: the two above with each prediction's
  confidence first moved to the given pool prior (a model calibrated on the labels' class mix
  is overconfident in a class the pool holds few of); without a given prior, the same.

The interval is a bootstrap over the pool's images plus the spread of the estimators
that apply: the methods disagree most where none of them can be trusted.

*Cross-fitted* estimators (``CROSS_FITTED``; ``finessl.cross_fit`` makes their inputs)
calibrate on labeled images predicted by fold models that never trained on them, instead of
on memorised ones: ``held-out`` (the folds' accuracy on them: fewer labels, so it
underrates), ``cross-fit-atc`` and ``cross-fit-temperature`` (the ATC threshold and the
temperature fitted there, applied to the run's own pool confidences), ``cross-fit-doc``
(held-out accuracy plus the run's confidence gain over the folds on the pool),
``fold-agreement`` (how often two folds agree on the pool, plus that gain) and
``run-fold-agreement`` (how often the run and a fold agree on the pool: Jiang et al.'s
agreement between two models that share half their labels), ``checked-confidence`` (plain
confidence where the folds are calibrated on their held-out labels, run-fold agreement where
they are not) and ``cross-fit-mixture`` (the run's pool confidence as a mixture of the
folds' confidence on right and on wrong held-out answers). Their bootstrap also redraws the
held-out images.

*Peer* estimators (``PEERED``) read a second run's predictions on the same pool images:
``peer-agreement`` is how often the two runs predict the same class (Jiang et al.'s
disagreement between two seeds; a second training run on other labels is the cost: runs on
the same labels share their mistakes). Its interval is the bootstrap alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finessl.registry import Registry

ESTIMATORS: Registry[Callable[..., float]] = Registry("estimate.method")
CROSS_FITTED: Registry[Callable[..., float]] = Registry("estimate.cross-fitted method")
PEERED: Registry[Callable[..., float]] = Registry("estimate.peer method")
# Written down before the 12 runs that measured it, and less wrong there than plain
# confidence by more than the point the rule asked (6.0 against 8.6 mean error; it ranks and
# chooses checkpoints better too): docs/results.md#longer-runs-capped-confidence-and-the-keep-margin.
DEFAULT_ESTIMATOR = "capped-confidence"
# The cross-fitted estimator ``finessl estimate --cross-fit`` reports: the least wrong on 21
# cross-fitted runs (docs/results.md#cross-fitted-estimates).
DEFAULT_CROSS_FITTED = "run-fold-agreement"
# The estimator ``finessl estimate --peer`` reports: within 2.9 points of the true top-1 on
# 32 long-tailed runs whose pairs differ in their labels, where capped-confidence was 4.9;
# 13 points too high on 8 runs whose pairs share them (docs/results.md, "Two runs'
# agreement" and "Two runs on one labeled set").
DEFAULT_PEERED = "peer-agreement"
# The estimators an interval is widened to. Plain ones: their spread. Cross-fitted ones: a
# bracket from the mechanism, not a fit: the folds' held-out accuracy is a model with fewer
# labels (a low end), plain confidence the run's own optimism (a high end); measured, the
# pool bootstrap alone held the true accuracy for 14 % of the cross-fitted runs.
PLAIN_SPREAD = ("atc", "doc", "agreement")
CROSS_FITTED_BRACKET = ("held-out", "confidence")
FALLBACK_ESTIMATOR = "atc"  # where a chosen estimator does not apply (agreement without a
                            # trained auxiliary head, the calibrated ones without labels)


@dataclass
class Outputs:
    """Class probabilities: ``pool`` [N, C] (``pool_aux``: the auxiliary head's, or None);
    the calibration set ``calibration`` [M, C] with its labels (None: no calibration);
    ``prior`` [C]: the pool's class shares where the user knows them (``read_pool_prior``),
    which ``capped-confidence`` then caps at instead of the labeled set's; ``peer`` [N, C]:
    another run's probabilities on the same pool images (row for row)."""

    pool: np.ndarray
    pool_aux: np.ndarray | None = None
    calibration: np.ndarray | None = None
    calibration_labels: np.ndarray | None = None
    held_out: HeldOut | None = None
    prior: np.ndarray | None = None
    peer: np.ndarray | None = None

    def subset(self, rows: np.ndarray, held_rows: np.ndarray | None = None) -> Outputs:
        """The pool rows ``rows`` (and the held-out rows ``held_rows``), as a bootstrap draws."""
        held = self.held_out
        if held is not None:
            held = held.subset(rows, held_rows)
        return Outputs(self.pool[rows], None if self.pool_aux is None else self.pool_aux[rows],
                       self.calibration, self.calibration_labels, held, self.prior,
                       None if self.peer is None else self.peer[rows])


@dataclass
class HeldOut:
    """What cross-fitting saw: fold-model probabilities ``probs`` [M, C] on the labeled
    images each fold left out, their ``labels``, and on the pool (the rows of
    ``Outputs.pool``) the folds' mean top-class probability ``pool_confidence`` [N] and
    each fold's predicted class ``pool_predictions`` [K, N]."""

    probs: np.ndarray
    labels: np.ndarray
    pool_confidence: np.ndarray
    pool_predictions: np.ndarray

    def subset(self, rows: np.ndarray, held_rows: np.ndarray | None = None) -> HeldOut:
        keep = slice(None) if held_rows is None else held_rows
        return HeldOut(self.probs[keep], self.labels[keep], self.pool_confidence[rows],
                       self.pool_predictions[:, rows])

    @property
    def right(self) -> np.ndarray:
        return self.probs.argmax(1) == self.labels


def _confidence(probs: np.ndarray) -> np.ndarray:
    return probs.max(axis=1)


@ESTIMATORS.register("confidence")
def confidence(out: Outputs) -> float:
    return float(_confidence(out.pool).mean())


@ESTIMATORS.register("temperature")
def temperature(out: Outputs) -> float:
    if out.calibration is None:
        return float("nan")
    t = fit_temperature(out.calibration, out.calibration_labels)
    return float(_confidence(_tempered(out.pool, t)).mean())


@ESTIMATORS.register("atc")
def atc(out: Outputs) -> float:
    if out.calibration is None:
        return float("nan")
    threshold = atc_threshold(_confidence(out.calibration),
                              out.calibration.argmax(1) == out.calibration_labels)
    return float((_confidence(out.pool) > threshold).mean())


@ESTIMATORS.register("doc")
def doc(out: Outputs) -> float:
    if out.calibration is None:
        return float("nan")
    right = float((out.calibration.argmax(1) == out.calibration_labels).mean())
    drop = float(_confidence(out.calibration).mean()) - float(_confidence(out.pool).mean())
    return float(np.clip(right - drop, 0.0, 1.0))


@ESTIMATORS.register("agreement")
def agreement(out: Outputs) -> float:
    if out.pool_aux is None:
        return float("nan")
    return float((out.pool.argmax(1) == out.pool_aux.argmax(1)).mean())


def _capped_mass(out: Outputs, adjusted: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """Per predicted class, its confidence mass (the pool's share it gets right, if the model
    is calibrated) capped at the class's share of the pool (``cap_prior``), and that prior;
    None without a prior or a pool. ``adjusted``: the confidence in each prediction read from
    ``shifted_probs`` (the posteriors moved to the given pool prior)."""
    prior = cap_prior(out)
    if prior is None or not len(out.pool):
        return None
    C = out.pool.shape[1]
    predicted = out.pool.argmax(1)
    sure = shifted_probs(out)[np.arange(len(predicted)), predicted] if adjusted else _confidence(out.pool)
    mass = np.bincount(predicted, weights=sure, minlength=C) / len(out.pool)
    return np.minimum(mass, prior), prior


def shifted_probs(out: Outputs) -> np.ndarray:
    """The pool probabilities as a model calibrated on the labeled set's class mix would give
    them on a pool of the given prior's mix (Saerens et al., 2002: each class's probability
    times its pool share over its labeled share, renormalised); the model's own probabilities
    without a given prior or labels."""
    if out.prior is None or out.calibration_labels is None or not len(out.calibration_labels):
        return out.pool
    labeled = labeled_prior(out.calibration_labels, out.pool.shape[1])
    ratio = np.divide(np.asarray(out.prior, np.float64), labeled, out=np.ones_like(labeled),
                      where=labeled > 0)
    moved = out.pool * ratio[None]
    return moved / np.clip(moved.sum(1, keepdims=True), 1e-12, None)


@ESTIMATORS.register("capped-confidence")
def capped_confidence(out: Outputs) -> float:
    """Accuracy is at most sum_k min(P(predicted k), P(class k)); per predicted class the
    calibrated share of right answers is its confidence mass, capped at the class's share of
    the pool (``cap_prior``: the one given, else the labeled set's)."""
    return _accuracy_on_pool(out, adjusted=False)


@ESTIMATORS.register("capped-recall")
def capped_recall(out: Outputs) -> float:
    """The accuracy on images in the labeled set's class mix, not the pool's: each class's
    capped mass over its share of the pool is its estimated recall, which a change of class
    mix alone leaves as it is, averaged with the labeled set's shares (equal shares: a
    balanced test set's top-1). The same as ``capped-confidence`` unless a pool prior is
    given; a class the given prior says the pool lacks has no recall to read and is left
    out of the average."""
    return _recall_at_labeled_mix(out, adjusted=False)


@ESTIMATORS.register("adjusted-confidence")
def adjusted_confidence(out: Outputs) -> float:
    """``capped-confidence`` with each prediction's confidence read after moving the model's
    probabilities to the given pool prior (``shifted_probs``): a prediction of a class the
    pool holds few of counts for less than the model's own confidence in it. Without a given
    prior, ``capped-confidence``."""
    return _accuracy_on_pool(out, adjusted=True)


@ESTIMATORS.register("adjusted-recall")
def adjusted_recall(out: Outputs) -> float:
    """``capped-recall`` from the confidences of ``adjusted-confidence``: the labeled set's
    class mix, read without crediting a rare class with every image predicted as it."""
    return _recall_at_labeled_mix(out, adjusted=True)


def _accuracy_on_pool(out: Outputs, adjusted: bool) -> float:
    capped = _capped_mass(out, adjusted)
    return float("nan") if capped is None else float(capped[0].sum())


def _recall_at_labeled_mix(out: Outputs, adjusted: bool) -> float:
    capped = _capped_mass(out, adjusted)
    if capped is None or out.calibration_labels is None or not len(out.calibration_labels):
        return float("nan")
    right, prior = capped
    target = labeled_prior(out.calibration_labels, out.pool.shape[1]) * (prior > 0)
    if target.sum() <= 0:
        return float("nan")
    recall = np.divide(right, prior, out=np.zeros_like(right), where=prior > 0)
    return float((target * recall).sum() / target.sum())


# The estimators that cap at a pool prior (a given one, else the labeled set's): apart from
# the rest by design, so the warnings read them on their own (``_cap_at_work``).
PRIOR_READERS = ("capped-confidence", "capped-recall", "adjusted-confidence", "adjusted-recall")


def labeled_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Each class's share of the labeled set (the calibration labels)."""
    return np.bincount(labels, minlength=num_classes)[:num_classes] / max(len(labels), 1)


def cap_prior(out: Outputs) -> np.ndarray | None:
    """The class shares ``capped-confidence`` caps at: the pool prior the user gave, else the
    labeled set's (None without either)."""
    if out.prior is not None:
        return np.asarray(out.prior, np.float64)
    if out.calibration_labels is None or not len(out.calibration_labels):
        return None
    return labeled_prior(out.calibration_labels, out.pool.shape[1])


def read_pool_prior(path: str | Path, classes: Sequence[str]) -> np.ndarray:
    """A pool's class shares from a CSV file with a ``class`` column and a ``share`` (or
    ``pool_share``, as ``finessl audit`` writes it in ``pool_prior.csv``) column, in the
    order of ``classes``; shares are normalised to sum to one, every class must be listed."""
    import csv

    from finessl.errors import DataError

    path = Path(path)
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read the pool prior {path}: {error}") from error
    column = next((c for c in ("share", "pool_share") if rows and c in rows[0]), None)
    if not rows or "class" not in rows[0] or column is None:
        raise DataError(f"{path}: a pool prior needs a header with 'class' and 'share' (or "
                        "'pool_share', as finessl audit writes pool_prior.csv) and a row per class")
    shares: dict[str, float] = {}
    for number, row in enumerate(rows, start=2):
        try:
            share = float(row[column])
        except (TypeError, ValueError):
            share = float("nan")
        if not np.isfinite(share) or share < 0:
            raise DataError(f"{path}, line {number}: {column} {row[column]!r} is not a share >= 0")
        shares[row["class"]] = share
    unknown = sorted(set(shares) - set(classes))
    missing = [c for c in classes if c not in shares]
    wrong = ([f"not the run's: {', '.join(unknown)}"] if unknown else []) + \
        ([f"missing: {', '.join(missing)}"] if missing else [])
    if wrong:
        raise DataError(f"{path}: the classes must be the run's ({', '.join(classes)}); "
                        + "; ".join(wrong))
    prior = np.asarray([shares[c] for c in classes], np.float64)
    if prior.sum() <= 0:
        raise DataError(f"{path}: the shares sum to zero")
    return prior / prior.sum()


@CROSS_FITTED.register("held-out")
def held_out(out: Outputs) -> float:
    if out.held_out is None or not len(out.held_out.labels):
        return float("nan")
    return float(out.held_out.right.mean())


@CROSS_FITTED.register("cross-fit-atc")
def cross_fit_atc(out: Outputs) -> float:
    if out.held_out is None or not len(out.held_out.labels):
        return float("nan")
    threshold = atc_threshold(_confidence(out.held_out.probs), out.held_out.right)
    return float((_confidence(out.pool) > threshold).mean())


@CROSS_FITTED.register("cross-fit-temperature")
def cross_fit_temperature(out: Outputs) -> float:
    if out.held_out is None or not len(out.held_out.labels):
        return float("nan")
    t = fit_temperature(out.held_out.probs, out.held_out.labels)
    return float(_confidence(_tempered(out.pool, t)).mean())


@CROSS_FITTED.register("cross-fit-doc")
def cross_fit_doc(out: Outputs) -> float:
    if out.held_out is None or not len(out.held_out.labels):
        return float("nan")
    gain = float(_confidence(out.pool).mean()) - float(out.held_out.pool_confidence.mean())
    return float(np.clip(out.held_out.right.mean() + gain, 0.0, 1.0))


@CROSS_FITTED.register("fold-agreement")
def fold_agreement(out: Outputs) -> float:
    """How often two folds (trained on disjoint halves of the labels) agree on a pool image,
    plus the run's confidence gain over them: Jiang et al.'s disagreement, between models
    whose labeled data differ, from the folds' accuracy to the run's."""
    if out.held_out is None or len(out.held_out.pool_predictions) < 2:
        return float("nan")
    folds = out.held_out.pool_predictions
    pairs = [(folds[i] == folds[j]).mean() for i in range(len(folds)) for j in range(i + 1, len(folds))]
    gain = float(_confidence(out.pool).mean()) - float(out.held_out.pool_confidence.mean())
    return float(np.clip(np.mean(pairs) + gain, 0.0, 1.0))


@CROSS_FITTED.register("run-fold-agreement")
def run_fold_agreement(out: Outputs) -> float:
    """How often the run and a fold predict the same class on a pool image (mean over
    folds)."""
    if out.held_out is None or not len(out.held_out.pool_predictions):
        return float("nan")
    return float((out.held_out.pool_predictions == out.pool.argmax(1)[None]).mean())


@CROSS_FITTED.register("checked-confidence")
def checked_confidence(out: Outputs) -> float:
    """Plain ``confidence`` where the folds' own confidence passes the check it can be given:
    on the labels they never saw, their mean confidence is within two standard errors of
    their accuracy; ``run-fold-agreement`` where it fails (confidently wrong folds: the run,
    trained the same way on the same pool, is likely overconfident too)."""
    checked = miscalibration(out.held_out)
    if checked is None:
        return float("nan")
    return run_fold_agreement(out) if checked[0] else confidence(out)


def miscalibration(held: HeldOut | None) -> tuple[bool, float] | None:
    """Whether the folds' mean confidence on the labels they never saw is more than two
    standard errors from their accuracy there, and by how much (confidence minus accuracy);
    None with fewer than two held-out labels."""
    if held is None or len(held.labels) < 2:
        return None
    gap = _confidence(held.probs) - held.right
    return bool(abs(gap.mean()) > 2.0 * gap.std(ddof=1) / np.sqrt(len(gap))), float(gap.mean())


@CROSS_FITTED.register("cross-fit-mixture")
def cross_fit_mixture(out: Outputs) -> float:
    """The run's mean pool confidence as a mixture of the folds' mean confidence on the
    held-out labels they got right and on those they got wrong; the mixing weight is the
    accuracy. Assumes the run is as confident as the folds on each kind of answer."""
    if out.held_out is None:
        return float("nan")
    scores, right = _confidence(out.held_out.probs), out.held_out.right
    if right.all() or not right.any():
        return float("nan")
    sure, unsure = float(scores[right].mean()), float(scores[~right].mean())
    if sure <= unsure:
        return float("nan")
    return float(np.clip((confidence(out) - unsure) / (sure - unsure), 0.0, 1.0))


@PEERED.register("peer-agreement")
def peer_agreement(out: Outputs) -> float:
    """How often this run and the peer run predict the same class on a pool image."""
    if out.peer is None or len(out.peer) != len(out.pool):
        return float("nan")
    return float((out.pool.argmax(1) == out.peer.argmax(1)).mean()) if len(out.pool) else float("nan")


def method_of(name: str) -> Callable[..., float]:
    """An estimator of any registry by name (unknown names: the plain registry's error)."""
    for registry in (CROSS_FITTED, PEERED):
        if name in registry:
            return registry.get(name)
    return ESTIMATORS.get(name)


def atc_threshold(scores: np.ndarray, right: np.ndarray) -> float:
    """The score t with (calibration scores > t) as frequent as correct predictions."""
    accuracy = float(np.mean(right))
    if accuracy >= 1.0:
        return float(scores.min()) - 1e-12
    return float(np.quantile(scores, 1.0 - accuracy))


def _tempered(probs: np.ndarray, t: float) -> np.ndarray:
    logits = np.log(np.clip(probs, 1e-12, None)) / t
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature (0.05-20, log grid then golden refinement) of least NLL on ``probs``."""
    def nll(log_t: float) -> float:
        tempered = _tempered(probs, float(np.exp(log_t)))
        return float(-np.log(np.clip(tempered[np.arange(len(labels)), labels], 1e-12, None)).mean())

    grid = np.linspace(np.log(0.05), np.log(20.0), 61)
    best = int(np.argmin([nll(g) for g in grid]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(30):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


@dataclass
class Estimate:
    """Estimated top-1 in percent, with its interval and where it comes from."""

    top1: float
    interval: tuple[float, float]
    method: str
    methods: dict[str, float]  # every estimator that applies, in percent
    pool_size: int
    warnings: list[str]

    def as_dict(self) -> dict:
        return {"estimated_top1": self.top1, "estimated_top1_interval": list(self.interval),
                "estimate_method": self.method, "estimates": self.methods,
                "estimate_pool": self.pool_size, "estimate_warnings": self.warnings}


def estimate(out: Outputs, method: str = DEFAULT_ESTIMATOR, seed: int = 0,
             bootstrap: int = 200, classes: Sequence[str] | None = None) -> Estimate:
    """The chosen estimator (``agreement`` falls back to ``atc`` without a trained auxiliary
    head, a cross-fitted or peer one to ``confidence`` without held-out or peer predictions),
    every other one for comparison, a 95 % bootstrap interval, and warnings where the estimate
    is not to be trusted (``classes``: the names they use). The bootstrap interval is widened:
    without cross-fitting to the range of ``PLAIN_SPREAD`` (they share one optimism, so their
    spread is the honest part), with it to ``CROSS_FITTED_BRACKET`` (a cross-fitted bootstrap
    also redraws the held-out images); a peer estimate's is the bootstrap's (it does not share
    the others' optimism, so their spread says nothing about it)."""
    method_of(method)
    plain = {name: ESTIMATORS.get(name)(out) for name in ESTIMATORS}
    plain = {name: value for name, value in plain.items() if np.isfinite(value)}
    crossed = {name: CROSS_FITTED.get(name)(out) for name in CROSS_FITTED}
    crossed = {name: value for name, value in crossed.items() if np.isfinite(value)}
    peered = {name: PEERED.get(name)(out) for name in PEERED}
    peered = {name: value for name, value in peered.items() if np.isfinite(value)}
    applicable = {**plain, **crossed, **peered}
    chosen = method if method in applicable else \
        ("confidence" if method in CROSS_FITTED or method in PEERED else FALLBACK_ESTIMATOR)
    if chosen not in applicable:
        chosen = "confidence"
    value = applicable[chosen]
    rng = np.random.default_rng(seed)
    n = len(out.pool)
    m = len(out.held_out.labels) if out.held_out is not None else 0
    draws = [method_of(chosen)(out.subset(rng.integers(0, n, n),
                                          rng.integers(0, m, m) if m else None))
             for _ in range(bootstrap)] if n else [value]
    low, high = np.quantile(draws, [0.025, 0.975]) if n else (value, value)
    bracket = CROSS_FITTED_BRACKET if chosen in CROSS_FITTED else \
        () if chosen in PEERED else PLAIN_SPREAD
    spread = [v for k, v in applicable.items() if k in bracket]
    low, high = min(low, value, *spread), max(high, value, *spread)
    return Estimate(100.0 * value, (100.0 * float(low), 100.0 * float(high)), chosen,
                    {k: 100.0 * v for k, v in applicable.items()}, n, warnings_for(out, plain, classes))


def common_estimates(finals: list[dict]) -> tuple[str | None, list[float | None]]:
    """One estimator for every run (runs compared on different estimators are not compared):
    the first run's, when every run has it, else the first that every run has."""
    methods = [set((f.get("estimates") or {}).keys()) for f in finals]
    shared = set.intersection(*methods) if methods else set()
    first = finals[0].get("estimate_method") if finals else None
    order = [first] + sorted(shared) if first else sorted(shared)
    method = next((m for m in order if m in shared), None)
    return method, [f["estimates"][method] if method else None for f in finals]


# A predicted class this much more frequent (or rarer) in the pool than in the labeled set,
# or estimators this far apart, and the estimate is flagged.
SHIFT_RATIO = 3.0
DISAGREEMENT = 0.10


def warnings_for(out: Outputs, applicable: dict[str, float],
                 classes: Sequence[str] | None = None) -> list[str]:
    """What makes the estimate doubtful, in words for the user: each cause on its own line
    (the cap at work is one, the other estimators disagreeing another), so that one does not
    hide the other."""
    notes = []
    if len(out.pool) == 0:
        return ["the pool is empty: nothing to estimate on"]
    C = out.pool.shape[1]
    predicted = np.bincount(out.pool.argmax(1), minlength=C) / len(out.pool)
    if predicted.max() > min(0.9, SHIFT_RATIO / C):
        notes.append(f"the model puts {100 * predicted.max():.0f} % of the pool into one class: "
                     "a collapsed model (the estimates overrate it) or a pool mostly of one class "
                     "(capped-confidence, which caps each class at its labeled share, then underrates it)")
    checked = miscalibration(out.held_out)
    if checked is not None and checked[0]:
        side = "above" if checked[1] > 0 else "below"
        notes.append(f"on the labels they never saw, the cross-fitting folds' confidence is "
                     f"{100 * abs(checked[1]):.0f} points {side} their accuracy: plain confidence "
                     "may overrate this run too (folds with fewer labels are more overconfident "
                     "than their run, so this is a hint, not proof)")
    cap = _cap_at_work(out, applicable, predicted, classes)
    if cap:
        notes.append(cap)
    others = [v for k, v in applicable.items() if k not in PRIOR_READERS]
    if len(others) > 1 and max(others) - min(others) > DISAGREEMENT:
        notes.append(f"the estimators disagree by {100 * (max(others) - min(others)):.0f} points: "
                     "the pool may hold images unlike the labeled ones (run finessl audit)")
    return notes


def _cap_at_work(out: Outputs, applicable: dict[str, float], predicted: np.ndarray,
                 classes: Sequence[str] | None) -> str | None:
    """Where the cap takes more than ``DISAGREEMENT`` off plain confidence, why, in words:
    which class the model predicts more often than the labeled set holds it, and the two
    readings of that (classes merged into it, or a pool that really holds more of it)."""
    capped, plain = applicable.get("capped-confidence"), applicable.get("confidence")
    prior = cap_prior(out)
    if capped is None or plain is None or plain - capped <= DISAGREEMENT or prior is None:
        return None
    k = int(np.argmax(predicted - prior))
    name = classes[k] if classes is not None and k < len(classes) else f"class {k}"
    said = (f"capped-confidence is {100 * (plain - capped):.0f} points below confidence: the model "
            f"puts {100 * predicted[k]:.0f} % of the pool into {name!r}")
    if out.prior is not None:
        return (f"{said}, where the pool prior given holds {100 * prior[k]:.0f} %: classes merged "
                "into it, or a prior that is off")
    return (f"{said} against {100 * prior[k]:.0f} % "
            "of the labeled set; if it merges other classes into it, the cap is right; if the pool "
            f"really holds that many (a long tail), the cap cuts right answers too and the accuracy "
            f"on this pool is likely between {100 * capped:.0f} % and confidence's {100 * plain:.0f} % "
            "(finessl audit estimates the pool's class prior)")


# ---------------------------------------------------------------- the model's outputs

ESTIMATE_POOL = 2000  # pool images an estimate during training reads (a fixed random subset)
CALIBRATION_VIEWS = 4  # strong views of each labeled image in the calibration set


def calibration_view(labeled, strong_transform, views: int = CALIBRATION_VIEWS):
    """The labeled images under ``views`` strong augmentations each, with their labels."""
    from torch.utils.data import ConcatDataset

    from finessl.data.ssl_data import LabeledView

    return ConcatDataset([LabeledView(labeled.source, labeled.indices, strong_transform, labeled.labels)
                          for _ in range(views)])


class PoolImages:
    """Pool images at test transform as ``(image, 0)``; an unreadable one is ``(zeros, -1)``
    and left out of the estimate."""

    def __init__(self, source, indices: np.ndarray, transform, image_size: int) -> None:
        self.source, self.indices = source, np.asarray(indices)
        self.transform, self.image_size = transform, image_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        import torch

        from finessl.errors import DataError

        try:
            image, _ = self.source[int(self.indices[index])]
            return self.transform(image), 0
        except DataError:
            return torch.zeros(3, self.image_size, self.image_size), -1


def pool_view(source_train, unlabeled_indices: np.ndarray, test_transform, image_size: int,
              size: int | None = ESTIMATE_POOL, seed: int = 0) -> PoolImages:
    """A fixed random subset (``size`` images; None: all) of the pool at test transform."""
    from finessl.data.ssl_data import cap_indices

    indices = cap_indices(np.asarray(unlabeled_indices), size, seed)
    return PoolImages(source_train, indices, test_transform, image_size)


def data_outputs(model, data, trains_aux: bool, device, image_size: int, batch_size: int = 256,
                 seed: int = 0, pool=None, autocast=None, pool_size: int | None = ESTIMATE_POOL) -> Outputs:
    """``model_outputs`` on a run's data: its pool subset (``pool_size`` images drawn with
    ``seed``, or ``pool``) and its calibration set (drawn with ``seed``)."""
    if pool is None:
        pool = pool_view(data.source.train, data.unlabeled_indices, data.transforms.test,
                         image_size, pool_size, seed)
    calibration = calibration_view(data.labeled, data.transforms.strong)
    return model_outputs(model, pool, calibration, device, batch_size, seed, autocast, trains_aux)


def model_outputs(model, pool, calibration, device, batch_size: int = 256, seed: int = 0,
                  autocast=None, with_aux: bool = True) -> Outputs:
    """Main (and auxiliary) head probabilities on ``pool``; main-head probabilities on
    ``calibration`` (drawn with a fixed seed, leaving every random state as it was, so a
    run that estimates trains exactly as one that does not). Unreadable images are skipped."""
    import contextlib
    import random

    import torch
    from torch.utils.data import DataLoader

    autocast = autocast or contextlib.nullcontext

    def forward(dataset, aux: bool):
        main, extra, labels = [], [], []
        for images, targets in DataLoader(dataset, batch_size=batch_size, num_workers=0):
            with autocast():
                result = model(images.to(device), aux=True) if aux else (model(images.to(device)), None)
            main.append(result[0].float().softmax(-1).cpu())
            if aux:
                extra.append(result[1].float().softmax(-1).cpu())
            labels.append(torch.as_tensor(targets))
        if not main:
            return np.zeros((0, 0)), None, np.zeros(0, dtype=np.int64)
        return (torch.cat(main).numpy(), torch.cat(extra).numpy() if aux else None,
                torch.cat(labels).numpy())

    was_training = model.training
    model.eval()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            pool_main, pool_aux, readable = forward(pool, with_aux)
            keep = readable >= 0
            pool_main = pool_main[keep]
            pool_aux = pool_aux[keep] if pool_aux is not None else None
            calib, _, calib_labels = forward(calibration, False) if calibration is not None \
                else (None, None, None)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        model.train(was_training)
    return Outputs(pool_main, pool_aux, calib, calib_labels)
