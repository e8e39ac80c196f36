"""Every PEFT method on tiny random-weight models of each family it applies to."""

import pytest
import torch

from finessl.errors import ConfigError
from finessl.models import build_backbone, build_model
from finessl.rundir import RunDir

from helpers import model_config

FAMILIES = {
    # name: (config kwargs, is_vit)
    "clip-vit": (dict(backbone="tiny-vit", image_size=32), True),
    "timm-vit": (dict(backbone="timm:test_vit", image_size=32), True),
    "clip-resnet": (dict(backbone="tiny-resnet", image_size=32), False),
    "timm-cnn": (dict(backbone="timm:test_efficientnet", image_size=32), False),
}
VIT_METHODS = ["linear", "vpt-deep", "vpt-shallow", "vpt-last", "lora", "adapter", "adaptformer",
               "ssf", "bitfit", "full", "lora+vpt-deep", "ia3"]
CNN_METHODS = ["linear", "bn-tuning", "bitfit", "ssf", "full"]
CASES = [(f, m) for f, (_, vit) in FAMILIES.items() for m in (VIT_METHODS if vit else CNN_METHODS)]
TOKENS, RANK = 3, 4


def config(family, method, **extra):
    kwargs, _ = FAMILIES[family]
    return model_config(pretrained=None, peft=method, vpt_tokens=TOKENS, lora_rank=RANK,
                        **kwargs, **extra)


def build(family, method, **extra):
    torch.manual_seed(0)
    return build_model(config(family, method, **extra), num_classes=3)


def backbone_trainable(model):
    return sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)


def mlp_width(backbone):
    fc1 = [m for n, m in backbone.named_modules() if n.endswith(("c_fc", "fc1"))][0]
    return fc1.out_features


def expected_count(backbone, method, blocks=None):
    """Each method's parameter formula (ViT: L layers, W width, k tuned blocks)."""
    def norms():
        return [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    if method == "linear":
        return 0
    if method in ("bn-tuning",) or (method == "ssf" and not backbone.is_vit):
        return sum(2 * m.num_features for m in norms())
    if method == "bitfit":
        return sum(p.numel() for n, p in backbone.feature_parameters() if n.endswith("bias"))
    if method == "full":
        return sum(p.numel() for _, p in backbone.feature_parameters())
    if method == "lora+vpt-deep":
        return expected_count(backbone, "lora") + expected_count(backbone, "vpt-deep")
    L, W = backbone.num_layers, backbone.width
    k = L if blocks is None else blocks
    return {
        "vpt-deep": k * TOKENS * W,
        "vpt-shallow": TOKENS * W,
        "vpt-last": TOKENS * W,
        "lora": k * 2 * (RANK * W + W * RANK),
        "adapter": k * (W * 8 + 8 + 8 * W + W),
        "adaptformer": k * (W * 64 + 64 + 64 * W + W),
        "ssf": k * 2 * (3 * W + W + W + W),
        "ia3": k * (2 * W + mlp_width(backbone)),
    }[method]


@pytest.mark.parametrize("family, method", CASES)
def test_trainable_count_matches_formula(family, method):
    model = build(family, method)
    assert backbone_trainable(model) == expected_count(model.backbone, method)


def test_bitfit_count_by_hand_on_tiny_clip():
    # per block: in_proj 3W + out_proj W + ln_1 W + ln_2 W + c_fc 2W + c_proj W = 9W;
    # 2 blocks + ln_pre + ln_post: 20W = 1280 for W = 64
    assert backbone_trainable(build("clip-vit", "bitfit")) == 1280


@pytest.mark.parametrize("method", ["vpt-deep", "lora", "adapter", "adaptformer", "ssf", "bitfit",
                                    "full"])
def test_partial_restricts_to_last_blocks(method):
    model = build("timm-vit", method, partial=2)
    backbone = model.backbone
    if method in ("bitfit", "full"):
        tuned = {id(p) for b in list(backbone.blocks)[-2:] for p in b.parameters()}
        assert all(id(p) in tuned for p in backbone.parameters() if p.requires_grad)
        assert backbone_trainable(model) > 0
    else:
        assert backbone_trainable(model) == expected_count(backbone, method, blocks=2)
    with pytest.raises(ConfigError, match="partial"):
        build("timm-vit", method, partial=99)


@pytest.mark.parametrize("family, method", CASES)
def test_steps_change_only_peft_and_heads(family, method):
    model = build(family, method).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    stats = {n: b.clone() for n, b in model.named_buffers() if "running_mean" in n}
    tuned = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    now = dict(model.named_parameters())
    for name, before in frozen.items():
        assert torch.equal(before, now[name]), f"frozen {name} changed"
    if tuned:
        changed = [n for n, before in tuned.items() if not torch.equal(before, now[f"backbone.{n}"])]
        assert changed, "no PEFT parameter changed"
    buffers = dict(model.named_buffers())
    if not model.backbone.trains_norm_statistics:
        assert all(torch.equal(v, buffers[n]) for n, v in stats.items()), "BN statistics moved"


@pytest.mark.parametrize("family", ["clip-vit", "timm-vit"])
@pytest.mark.parametrize("method", ["lora", "adapter", "adaptformer"])
def test_zero_initialised_methods_start_at_backbone_output(family, method):
    model = build(family, method).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with_peft = model.features(x)
        saved = dict(model.backbone.peft)
        model.backbone.peft.clear()
        plain = model.features(x)
        model.backbone.peft.update(saved)
    assert torch.equal(with_peft, plain)


@pytest.mark.parametrize("family, method", CASES)
def test_adapter_weights_round_trip(family, method, tmp_path):
    model = build(family, method).eval()
    with torch.no_grad():  # move away from the initialisation so the test means something
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    meta = {"peft": method, "classes": ["a", "b", "c"], "num_features": model.backbone.num_features,
            "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    RunDir(tmp_path).save_adapter(model.trainable_state_dict(), meta)
    torch.manual_seed(123)  # a different random init of the PEFT modules and heads
    fresh = build_model(config(family, method), num_classes=3)
    state, meta = RunDir(tmp_path).load_adapter()
    assert set(state) == set(fresh.trainable_state_dict()) and meta["peft"] == method
    fresh.load_state_dict(state, strict=False)
    fresh.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))


def test_vit_forward_matches_timm():
    backbone = build_backbone(config("timm-vit", "linear")).eval()
    trunk = backbone.model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = trunk.forward_head(trunk.forward_features(x), pre_logits=True)
        assert torch.allclose(backbone(x), theirs, atol=1e-5)


def test_vit_only_methods_refuse_cnns():
    with pytest.raises(ConfigError, match="needs a ViT backbone"):
        build("clip-resnet", "lora")
    with pytest.raises(ConfigError, match="batch-norm"):
        build("clip-vit", "bn-tuning")


@pytest.mark.parametrize("family", ["clip-vit", "timm-vit"])
def test_ia3_rescales_keys_values_and_mlp_activations(family):
    """Starts as the identity; its parameter count is blocks x (2 width + MLP width); each
    vector acts where it should (a zero l_ff removes the MLP's hidden activations)."""
    plain, ia3 = build(family, "linear").eval(), build(family, "ia3").eval()
    backbone = ia3.backbone
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ia3(x), plain(x), atol=1e-5)
        hidden = backbone.parts(backbone.blocks[0]).mlp_up(torch.zeros(1, 1, backbone.width)).shape[-1]
    vectors = [p for n, p in ia3.named_parameters() if n.startswith("backbone.peft")]
    assert sum(p.numel() for p in vectors) == backbone.num_layers * (2 * backbone.width + hidden)
    module = backbone.peft["ia3"].blocks[0]
    with torch.no_grad():
        module.value.mul_(2.0)
        assert not torch.allclose(ia3(x), plain(x), atol=1e-4)
        module.value.fill_(1.0)
        module.feedforward.zero_()
        calls = []
        parts = backbone.parts(backbone.blocks[0])
        original = backbone.parts

        def spy(block):
            found = original(block)
            down = found.mlp_down
            found.mlp_down = lambda hidden: calls.append(float(hidden.abs().max())) or down(hidden)
            return found

        backbone.parts = spy
        ia3(x)
        backbone.parts = original
        assert calls[0] == 0.0 and parts.mlp_down is not None  # block 0's MLP saw zeros
