"""One FineSSL step against docs/method.md, computed independently here."""

import math

import pytest
import torch
from torch import nn

from finessl.algorithms import Batch, build_algorithm
from finessl.algorithms.base import forward_views
from finessl.config import AlgorithmConfig, ModelConfig
from finessl.models.backbone_base import ModuleBackbone
from finessl.models.model import build_model

C, D, B = 3, 4, 4
# The authors' rules, chosen explicitly: with 3 classes "auto" would pick the few-class forms.
REFERENCE = {"pace": "reference", "aux_weight": "confidence"}


def make_model(seed=0):
    torch.manual_seed(seed)
    backbone = ModuleBackbone(nn.Linear(D, D), num_features=D)
    return build_model(ModelConfig(peft="full"), C, backbone=backbone)


def make_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return Batch(
        images=torch.randn(B, D, generator=g),
        labels=torch.tensor([0, 1, 2, 1]),
        unlabeled_index=torch.tensor([5, 1, 7, 3]),
        weak=torch.randn(B, D, generator=g),
        strong=[torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)],
    )


def cosine_logits(head, z):
    return [[head.scale.item() * sum(a * b for a, b in zip(zi, wk)) /
             (math.sqrt(sum(a * a for a in zi)) * math.sqrt(sum(b * b for b in wk)))
             for wk in head.weight.tolist()] for zi in z]


def ce(logits, target, margin=0.0):
    shifted = [v + (margin if j != target else 0.0) for j, v in enumerate(logits)]
    return -shifted[target] + math.log(sum(math.exp(v) for v in shifted))


def softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def expected_losses(model, batch, selected_before, threshold=0.7, alpha=8.0, lam=0.5):
    """The losses of docs/method.md with plain Python arithmetic."""
    lin = model.backbone.module
    feats = lambda x: (x @ lin.weight.t() + lin.bias).tolist()  # noqa: E731
    counts = [sum(1 for s in selected_before if s == k) for k in range(C)]
    beta = [c / max(counts) for c in counts] if max(counts) > 0 else [0.0] * C
    scale = alpha * (max(beta) - min(beta))
    delta = [scale * (1 - b) / (1 + b) for b in beta]

    main = cosine_logits(model.head, feats(batch.images))
    aux = cosine_logits(model.aux_head, feats(batch.images))
    labels = batch.labels.tolist()
    loss_x = sum(ce(main[i], y, delta[y]) for i, y in enumerate(labels)) / B
    loss_x_aux = sum(ce(aux[i], y) for i, y in enumerate(labels)) / B

    probs = [softmax(r) for r in cosine_logits(model.head, feats(batch.weak))]
    conf = [max(p) for p in probs]
    pseudo = [p.index(max(p)) for p in probs]
    aux_conf = [max(softmax(r)) for r in cosine_logits(model.aux_head, feats(batch.weak))]

    terms_u, terms_u_aux = [], []
    for view in batch.strong:
        m = cosine_logits(model.head, feats(view))
        a = cosine_logits(model.aux_head, feats(view))
        for i in range(B):
            terms_u.append(aux_conf[i] * ce(m[i], pseudo[i], delta[pseudo[i]]))
            if conf[i] >= threshold:
                q = [lam / (C - 1)] * C
                q[pseudo[i]] = 1 - lam
                logp = [v - math.log(sum(math.exp(u) for u in a[i])) for v in a[i]]
                terms_u_aux.append(-sum(qk * lk for qk, lk in zip(q, logp)))
    loss_u = sum(terms_u) / len(terms_u)
    loss_u_aux = sum(terms_u_aux) / len(terms_u_aux) if terms_u_aux else 0.0
    return dict(loss_x=loss_x, loss_x_aux=loss_x_aux, loss_u=loss_u, loss_u_aux=loss_u_aux,
                conf=conf, pseudo=pseudo, aux_conf=aux_conf, delta=delta)


def run_step(threshold=0.7, preselect=True):
    model = make_model()
    # Different auxiliary head, so c' differs from c.
    with torch.no_grad():
        model.aux_head.weight.add_(0.3 * torch.randn_like(model.aux_head.weight))
        model.head.scale.fill_(4.0)
        model.aux_head.scale.fill_(3.0)
    algo = build_algorithm(AlgorithmConfig(name="finessl", threshold=threshold, **REFERENCE), C, 8)
    if preselect:  # counts 4, 2, 0 -> margins 0, 8/3, 8
        algo.pace.assign(torch.tensor([0, 0, 0, 0, 1, 1, -1, -1]))
    before = algo.pace.selected.tolist()
    batch = make_batch()
    expected = expected_losses(model, batch, before, threshold=threshold)
    result = algo.step(model, batch)
    return model, algo, batch, result, expected


def test_losses_match_spec():
    _, _, _, result, exp = run_step()
    assert exp["delta"] == pytest.approx([0.0, 8 / 3, 8.0])
    for key in ("loss_x", "loss_x_aux", "loss_u", "loss_u_aux"):
        assert result.terms[key].item() == pytest.approx(exp[key], rel=1e-5), key
    total = exp["loss_x"] + exp["loss_x_aux"] + 3.0 * exp["loss_u"] + exp["loss_u_aux"]
    assert result.loss.item() == pytest.approx(total, rel=1e-5)


def test_unlabeled_loss_uses_every_sample_weighted_by_aux_confidence():
    # With an unreachable threshold nothing is "selected", yet L_u is the mean over all
    # 2 * B terms of c'_i * CE_BMS; and L_u' is exactly zero.
    _, _, _, result, exp = run_step(threshold=1.01)
    assert result.terms["loss_u"].item() == pytest.approx(exp["loss_u"], rel=1e-5)
    assert exp["loss_u"] > 0
    assert result.terms["loss_u_aux"].item() == 0.0
    assert result.logs["mask"] == 0.0


def test_pace_counts_only_confident_pseudo_labels():
    _, algo, batch, _, exp = run_step(threshold=0.5)
    selected = algo.pace.selected.tolist()
    for i, index in enumerate(batch.unlabeled_index.tolist()):
        before = [0, 0, 0, 0, 1, 1, -1, -1][index]
        want = exp["pseudo"][i] if exp["conf"][i] >= 0.5 else before
        assert selected[index] == want
    assert min(exp["conf"]) < 0.5 <= max(exp["conf"])  # both cases occur
    algo.on_epoch_start(1)
    assert algo.pace.selected.tolist() == [-1] * 8
    assert algo.pace.beta.tolist() == [0.0] * C


def test_auxiliary_losses_send_no_gradient_into_backbone():
    model, _, _, result, _ = run_step()
    aux = result.terms["loss_x_aux"] + result.terms["loss_u_aux"]
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    grads = torch.autograd.grad(aux, backbone_params + [model.aux_head.weight],
                                allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads[:-1])
    assert grads[-1] is not None and grads[-1].abs().sum() > 0
    main = torch.autograd.grad(result.terms["loss_u"], backbone_params, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in main)


def test_weak_view_is_forwarded_without_gradient():
    calls = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(D, D)

        def forward(self, x):
            calls.append((x.shape[0], torch.is_grad_enabled()))
            return self.lin(x)

    model = build_model(ModelConfig(peft="full"), C,
                        backbone=ModuleBackbone(Recorder(), num_features=D))
    out = forward_views(model, make_batch(), aux=True)
    assert calls == [(B, False), (3 * B, True)]
    assert not out.weak.requires_grad and not out.weak_aux.requires_grad
    assert out.strong.requires_grad and out.strong.shape[0] == 2 * B


def test_one_strong_view_setting():
    model = make_model()
    algo = build_algorithm(AlgorithmConfig(name="finessl", strong_views=1, **REFERENCE), C, 8)
    batch = make_batch()
    batch.strong = batch.strong[:1]
    exp = expected_losses(model, batch, [-1] * 8)
    result = algo.step(model, batch)
    assert result.terms["loss_u"].item() == pytest.approx(exp["loss_u"], rel=1e-5)
