"""Each SSL algorithm's masking, weights, pseudo-labels and state on hand-worked tensors.

Expected values are computed here with plain arithmetic from each paper's formulas.
"""

import math

import pytest
import torch
from torch import nn

from finessl.algorithms import ALGORITHMS, Batch, build_algorithm
from finessl.algorithms.base import ViewLogits
from finessl.config import AlgorithmConfig, ModelConfig
from finessl.models.backbone_base import ModuleBackbone
from finessl.models.model import build_model

from helpers import algorithm_config

# The authors' FineSSL rules, chosen explicitly: with 3 classes "auto" picks the few-class forms.
REFERENCE = {"pace": "reference", "aux_weight": "confidence"}
P3 = torch.tensor([[0.8, 0.1, 0.1], [0.5, 0.3, 0.2], [0.1, 0.7, 0.2]])


def algo(name, num_classes=3, num_unlabeled=10, total_steps=None, **kwargs):
    return build_algorithm(algorithm_config(name=name, **kwargs), num_classes, num_unlabeled,
                           total_steps=total_steps)


def batch_for(indices):
    return Batch(images=torch.zeros(1), labels=torch.zeros(1), unlabeled_index=torch.tensor(indices))


def test_registry_has_every_algorithm():
    assert set(ALGORITHMS.names()) >= {"supervised", "pseudolabel", "fixmatch", "flexmatch",
                                       "freematch", "softmatch", "debiaspl", "finessl"}


def test_fixmatch_threshold():
    weight, selected = algo("fixmatch", threshold=0.7).mask(P3, batch_for([0, 1, 2]))
    assert weight.tolist() == [1.0, 0.0, 1.0] and selected.tolist() == [True, False, True]


def test_flexmatch_curriculum_thresholds_with_warmup():
    a = algo("flexmatch", threshold=0.7)
    # No confident history yet: beta = 0, so every threshold is 0 and everything passes.
    weight, _ = a.mask(P3, batch_for([0, 1, 2]))
    assert weight.tolist() == [1.0, 1.0, 1.0]
    # Confident (>= 0.7): sample 0 -> class 0, sample 2 -> class 1; sample 1 stays -1.
    assert a.selected_label.tolist()[:3] == [0, -1, 1]
    # Warm-up: beta_c = sigma_c / max(max sigma, unused) = [1, 1, 0] / max(1, 8)
    assert a.classwise_acc.tolist() == pytest.approx([1 / 8, 1 / 8, 0.0])
    # Next batch: threshold for class 0 is 0.7 * M(1/8) = 0.7 * (1/8) / (2 - 1/8) = 0.046667
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.045, 0.9, 0.055], [0.3, 0.3, 0.4]])
    weight, _ = a.mask(probs, batch_for([3, 4, 5]))
    t0 = 0.7 * (1 / 8) / (2 - 1 / 8)
    assert t0 == pytest.approx(0.0466667, abs=1e-6)
    # sample 3: class 0, 0.5 >= t0 passes; sample 4: class 1, 0.9 >= t1 passes;
    # sample 5: class 2 (beta 0 -> threshold 0) passes.
    assert weight.tolist() == [1.0, 1.0, 1.0]
    assert a.selected_label.tolist()[:6] == [0, -1, 1, -1, 1, -1]
    # counts [1, 2, 0], unused 7: beta = [1/7, 2/7, 0]
    assert a.classwise_acc.tolist() == pytest.approx([1 / 7, 2 / 7, 0.0])
    # A class-0 prediction of 0.05 now fails: threshold 0.7 * (1/7) / (2 - 1/7) = 0.053846
    weight, _ = a.mask(torch.tensor([[0.05, 0.02, 0.03], [0.06, 0.02, 0.02]]), batch_for([6, 7]))
    assert weight.tolist() == [0.0, 1.0]


def test_flexmatch_without_warmup():
    a = algo("flexmatch", threshold=0.7, flex_warmup=False)
    a.mask(P3, batch_for([0, 1, 2]))
    assert a.classwise_acc.tolist() == [1.0, 1.0, 0.0]
    weight, _ = a.mask(torch.tensor([[0.69, 0.3, 0.01], [0.71, 0.28, 0.01]]), batch_for([3, 4]))
    assert weight.tolist() == [0.0, 1.0]  # threshold 0.7 * 1 / (2 - 1) = 0.7


def test_freematch_self_adaptive_threshold_and_state():
    a = algo("freematch", num_classes=2, ema_momentum=0.5)
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    weight, selected = a.mask(probs, batch_for([0, 1, 2]))
    # tau = 0.5 * 0.5 + 0.5 * mean(0.9, 0.6, 0.8)
    tau = 0.25 + 0.5 * (2.3 / 3)
    p_model = [0.25 + 0.5 * (1.7 / 3), 0.25 + 0.5 * (1.3 / 3)]
    assert a.time_p.item() == pytest.approx(tau)
    assert a.p_model.tolist() == pytest.approx(p_model)
    assert a.label_hist.tolist() == pytest.approx([0.25 + 0.5 * 2 / 3, 0.25 + 0.5 / 3])
    # thresholds: class 0: tau * 1; class 1: tau * p_model[1] / p_model[0]
    t1 = tau * p_model[1] / p_model[0]
    assert [0.9 >= tau, 0.6 >= tau, 0.8 >= t1] == [True, False, True]
    assert weight.tolist() == [1.0, 0.0, 1.0]


def test_freematch_fairness_loss():
    a = algo("freematch", num_classes=2, ema_momentum=0.5, fairness_weight=1.0)
    a.p_model.copy_(torch.tensor([0.6, 0.4]))
    a.label_hist.copy_(torch.tensor([0.5, 0.5]))
    logits = torch.log(torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]]))
    selected = torch.tensor([True, False, True])
    views = ViewLogits(labeled=logits, strong=logits, weak=None)
    loss = a.extra_losses(views, None, selected.float(), selected)["loss_fair"].item()
    # passing strong predictions: [0.7, 0.3], [0.9, 0.1]; both argmax 0 -> hist [1, 0]
    mean = [0.8, 0.2]
    scaled = [mean[0] / 1.0, 0.0]  # 1/hist with 1/0 -> 0
    q = [scaled[0] / sum(scaled), scaled[1] / sum(scaled)]
    target = [0.6 / 0.5 / 2.0, 0.4 / 0.5 / 2.0]
    expected = target[0] * math.log(q[0] + 1e-12) + target[1] * math.log(q[1] + 1e-12)
    assert loss == pytest.approx(expected, rel=1e-5)
    none = a.extra_losses(views, None, torch.zeros(3), torch.zeros(3, dtype=torch.bool))
    assert none["loss_fair"].item() == 0.0


def test_softmatch_alignment_and_gaussian_weights():
    a = algo("softmatch", num_classes=2, ema_momentum=0.5)
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    # First batch: p_model is the batch mean itself (USB), not an EMA from uniform.
    p_model = [0.6, 0.4]
    aligned = a.align(probs)
    assert a.p_model.tolist() == pytest.approx(p_model)
    expected = []
    for row in probs.tolist():
        raw = [row[k] / p_model[k] for k in range(2)]
        expected.append([v / sum(raw) for v in raw])
    assert aligned.tolist() == [pytest.approx(r, rel=1e-5) for r in expected]
    # Second batch: EMA of the batch means.
    second = torch.tensor([[0.2, 0.8], [0.4, 0.6]])
    a.align(second)
    assert a.p_model.tolist() == pytest.approx([0.5 * 0.6 + 0.5 * 0.3, 0.5 * 0.4 + 0.5 * 0.7])


def test_softmatch_weights_from_aligned_confidence():
    a = algo("softmatch", num_classes=2, ema_momentum=0.5)
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    weight, selected = a.mask(probs, batch_for([0, 1, 2]))
    conf = []
    for row in probs.tolist():
        raw = [row[0] / 0.6, row[1] / 0.4]
        conf.append(max(raw) / sum(raw))
    mean = sum(conf) / 3
    var = sum((c - mean) ** 2 for c in conf) / 2
    mu, v = 0.25 + 0.5 * mean, 0.5 * 1.0 + 0.5 * var
    want = [1.0 if c >= mu else math.exp(-((c - mu) ** 2) / (2 * v / 4)) for c in conf]
    assert weight.tolist() == pytest.approx(want, rel=1e-5)
    assert selected.tolist() == [c >= mu for c in conf]
    assert min(want) < 1.0  # some weight is really soft


def test_softmatch_pseudo_labels_come_from_the_raw_probabilities():
    """USB's SoftMatch: alignment shapes the weights only; the labels are raw arg-maxes."""
    model = tiny_model()
    a = build_algorithm(AlgorithmConfig(name="softmatch"), C, 8)
    batch = tiny_batch(1)
    # A borderline sample (classes 0 / 1) among samples that mostly say class 1: aligning
    # by the batch mean moves its arg-max to class 0.
    batch.weak = batch.weak[[2, 1, 1, 1]]
    with torch.no_grad():
        raw = model(batch.weak).softmax(-1)
        aligned = raw / raw.mean(0)
        aligned = aligned / aligned.sum(-1, keepdim=True)
        conf = aligned.max(-1).values
        mu = 0.999 / C + 0.001 * conf.mean()
        var = 0.999 + 0.001 * conf.var()
        weight = torch.exp(-(torch.clamp(conf - mu, max=0) ** 2) / (2 * var / 4))
        strong = model(batch.strong[0])
        want = (weight * nn.functional.cross_entropy(strong, raw.argmax(-1), reduction="none")).mean()
        with_aligned = (weight * nn.functional.cross_entropy(strong, aligned.argmax(-1),
                                                             reduction="none")).mean()
    assert (raw.argmax(-1) != aligned.argmax(-1)).any()  # the two choices differ here
    result = a.step(model, batch)
    assert result.terms["loss_u"].item() == pytest.approx(want.item(), rel=1e-5)
    assert result.terms["loss_u"].item() != pytest.approx(with_aligned.item(), rel=1e-3)


def test_debiaspl_debiased_labels_and_adaptive_margin():
    a = algo("debiaspl", num_classes=2, ema_momentum=0.5, debias_strength=0.4)
    logits = torch.tensor([[1.0, 0.8], [0.2, 0.0]])
    probs = logits.softmax(-1)
    debiased = a.adjust_probs(probs, logits)
    p_hat = [0.25 + 0.5 * probs[:, k].mean().item() for k in range(2)]
    assert a.p_hat.tolist() == pytest.approx(p_hat, rel=1e-6)
    adjusted = [[logits[i, k].item() - 0.4 * math.log(p_hat[k]) for k in range(2)] for i in range(2)]
    want = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in adjusted]
    assert debiased.tolist() == [pytest.approx(r, rel=1e-5) for r in want]
    strong = a.adjust_strong(torch.zeros(1, 2))
    assert strong.tolist()[0] == pytest.approx([0.4 * math.log(p) for p in p_hat], rel=1e-5)


# ----------------------------------------------------------------------------- full steps

C, D, B = 3, 4, 4


def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(peft="full"), C,
                       backbone=ModuleBackbone(nn.Linear(D, D), num_features=D))


def tiny_batch(views):
    g = torch.Generator().manual_seed(1)
    return Batch(images=torch.randn(B, D, generator=g), labels=torch.tensor([0, 1, 2, 1]),
                 unlabeled_index=torch.tensor([5, 1, 7, 3]), weak=torch.randn(B, D, generator=g),
                 strong=[torch.randn(B, D, generator=g) for _ in range(views)])


@pytest.mark.parametrize("name", ["pseudolabel", "fixmatch", "flexmatch", "freematch", "softmatch",
                                  "debiaspl", "finessl"])
def test_every_algorithm_steps_and_checkpoints(name):
    cfg = AlgorithmConfig(name=name)
    a = build_algorithm(cfg, C, 8, total_steps=10)
    model = tiny_model()
    result = a.step(model, tiny_batch(a.needs(cfg).strong_views))
    assert torch.isfinite(result.loss)
    result.loss.backward()
    state = a.state_dict()
    twin = build_algorithm(cfg, C, 8, total_steps=10)
    twin.load_state_dict(state)
    assert all(torch.equal(state[k], twin.state_dict()[k]) for k in state)


def test_pseudolabel_unlabeled_weight_ramps_up_over_40_percent_of_training():
    model = tiny_model()
    a = algo("pseudolabel", num_classes=C, num_unlabeled=8, threshold=0.01, total_steps=10)
    for ramp in [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]:
        result = a.step(model, tiny_batch(0))
        t = result.terms
        assert result.loss.item() == pytest.approx((t["loss_x"] + ramp * t["loss_u"]).item(), rel=1e-6)
    assert t["loss_u"].item() > 0
    # FixMatch has no warm-up; any algorithm can have one.
    assert algo("fixmatch", total_steps=10).unlabeled_ramp() == 1.0
    flex = algo("flexmatch", unlabeled_warmup=0.5, total_steps=10)
    assert flex.unlabeled_ramp() == 0.0
    from finessl.errors import ConfigError

    with pytest.raises(ConfigError, match="training steps"):
        algo("pseudolabel")


def test_pseudolabel_trains_on_the_weak_view():
    a = algo("pseudolabel", num_classes=C, num_unlabeled=8, threshold=0.01, total_steps=10)
    assert a.needs(a.config).strong_views == 0
    model = tiny_model()
    batch = tiny_batch(0)
    result = a.step(model, batch)
    weight = model.backbone.module.weight
    grad = torch.autograd.grad(result.terms["loss_u"], weight)[0]
    assert grad.abs().sum() > 0


def test_finessl_parts_plug_into_flexmatch():
    cfg = AlgorithmConfig(name="flexmatch", bms=True, dls=True, weighting="aux", **REFERENCE)
    a = build_algorithm(cfg, C, 8)
    a.pace.assign(torch.tensor([0, 0, 0, 0, 1, 1, -1, -1]))
    result = a.step(tiny_model(), tiny_batch(1))
    assert {"loss_x", "loss_x_aux", "loss_u", "loss_u_aux"} <= set(result.terms)
    assert result.logs["margin_max"] == pytest.approx(8.0)
    # FlexMatch starts with all thresholds at 0, so every sample is "selected" for the pace.
    assert set(a.pace.selected[[5, 1, 7, 3]].tolist()) <= {0, 1, 2}


def test_ablation_switches():
    model = tiny_model()
    beta = torch.tensor([1.0, 0.5, 0.0])
    fixed = algo("finessl", margin_fixed=True, margin_alpha=2.0, **REFERENCE)
    fixed.pace.assign(torch.tensor([0, 0, 1, -1, -1, -1, -1, -1, -1, -1]))
    assert fixed.margins().tolist() == pytest.approx([2 * (1 - b) / (1 + b) for b in beta.tolist()])
    # BMS on unlabeled data only: L_x is the plain cross-entropy.
    only_u = algo("finessl", bms_labeled=False, num_unlabeled=8, **REFERENCE)
    only_u.pace.assign(torch.tensor([0, 0, 0, 0, 1, 1, -1, -1]))
    batch = tiny_batch(2)
    result = only_u.step(model, batch)
    plain = nn.functional.cross_entropy(model(batch.images), batch.labels)
    assert result.terms["loss_x"].item() == pytest.approx(plain.item(), rel=1e-6)
    # No DLS: weights are the main head's confidence and there is no auxiliary loss.
    no_dls = algo("finessl", dls=False, weighting="main", num_unlabeled=8)
    result = no_dls.step(model, tiny_batch(2))
    assert "loss_u_aux" not in result.terms
    assert result.logs["weight"] == pytest.approx(result.logs["conf"])
    # Auxiliary head without stop-gradient: its losses now reach the backbone.
    through = algo("finessl", aux_stop_gradient=False, num_unlabeled=8)
    result = through.step(model, tiny_batch(2))
    grad = torch.autograd.grad(result.terms["loss_x_aux"], model.backbone.module.weight)[0]
    assert grad.abs().sum() > 0
    # Auxiliary head without smoothing: lambda = 0 makes L_u' the plain CE on pseudo-labels.
    hard = algo("finessl", smoothing=0.0, threshold=0.01, num_unlabeled=8)
    batch = tiny_batch(2)
    result = hard.step(model, batch)
    with torch.no_grad():
        pseudo = model.head(model.features(batch.weak)).argmax(-1)
        strong = torch.cat([model.aux_head(model.features(s)) for s in batch.strong])
        want = nn.functional.cross_entropy(strong, pseudo.repeat(2))
    assert result.terms["loss_u_aux"].item() == pytest.approx(want.item(), rel=1e-5)


def test_aux_weighting_needs_the_aux_head():
    from finessl.errors import ConfigError

    with pytest.raises(ConfigError, match="auxiliary head"):
        algo("finessl", dls=False)


def test_pseudo_label_diagnostics():
    a = algo("finessl", num_classes=C, num_unlabeled=8, threshold=0.01, **REFERENCE)
    model = tiny_model()
    batch = tiny_batch(2)
    with torch.no_grad():
        pseudo = model(batch.weak).argmax(-1)
    batch.unlabeled_labels = torch.tensor([pseudo[0].item(), (pseudo[1].item() + 1) % C, -1,
                                           pseudo[3].item()])
    a.step(model, batch)
    report = a.diagnostics()
    assert report["pl_counts"] == torch.bincount(pseudo, minlength=C).tolist()
    assert report["pl_acc"] == pytest.approx(200 / 3)  # 2 of the 3 known are right
    assert len(report["margins"]) == C and 0 < report["mean_aux_conf"] <= 1
    assert a.diagnostics()["pl_counts"] == [0] * C  # reset after each report
