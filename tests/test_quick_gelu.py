"""The tower's activation follows the weights: QuickGELU for OpenAI CLIP, exact GELU otherwise."""

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from finessl.config import ModelConfig, load_preset, preset_names
from finessl.errors import ConfigError
from finessl.models.backbones import build_backbone, resolve_quick_gelu


@pytest.mark.parametrize("setting, name, tag, want", [
    ("auto", "ViT-B-16", "openai", True),            # OpenAI weights: trained with QuickGELU
    ("auto", "ViT-B-16", "laion2b_s34b_b88k", False),  # LAION weights: exact GELU
    ("auto", "ViT-B-16", None, None),                # random weights: the config's own
    ("auto", "ViT-B-16-quickgelu", None, True),      # the -quickgelu names keep working
    ("auto", "hf-hub:org/model", "openai", None),    # the hub config decides
    (True, "ViT-B-16", None, True),
    (True, "ViT-B-16", "laion2b_s34b_b88k", True),
    (False, "ViT-B-16", "openai", False),
])
def test_resolution(setting, name, tag, want):
    assert resolve_quick_gelu(setting, name, tag) is want


def test_contradictions_and_bad_values_are_errors():
    with pytest.raises(ConfigError, match="-quickgelu"):
        resolve_quick_gelu(False, "ViT-B-16-quickgelu", "openai")
    with pytest.raises(ConfigError, match="auto, true or false"):
        resolve_quick_gelu("yes", "ViT-B-16", "openai")


@pytest.mark.parametrize("setting, name, want", [
    ("auto", "vit_base_patch16_clip_224.openai", True),  # timm's GELU name with OpenAI weights
    ("auto", "vit_base_patch16_clip_quickgelu_224.openai", None),  # already QuickGELU
    ("auto", "vit_base_patch16_clip_224.laion2b", None),
    ("auto", "vit_small_patch16_224.augreg_in21k", None),
    (True, "vit_small_patch16_224", True),
    (False, "vit_base_patch16_clip_quickgelu_224.openai", False),
])
def test_timm_resolution(setting, name, want):
    from finessl.models.backbones import resolve_timm_quick_gelu

    assert resolve_timm_quick_gelu(setting, name) is want


@pytest.mark.parametrize("name, setting, want", [
    ("timm:vit_base_patch16_clip_224.openai", "auto", "QuickGELU"),
    ("timm:vit_base_patch16_clip_224.laion2b", "auto", "GELU"),
    ("timm:vit_base_patch16_clip_quickgelu_224.openai", False, "GELU"),
])
def test_timm_towers_get_the_resolved_activation(name, setting, want):
    config = ModelConfig(backbone=name, pretrained="none", quick_gelu=setting, image_size=32)
    backbone = build_backbone(config)
    assert backbone.source["activation"] == want
    assert all(type(b.mlp.act).__name__ == want for b in backbone.blocks)


def test_every_preset_with_openai_weights_resolves_to_quick_gelu():
    checked = 0
    for name in preset_names():
        model = load_preset(name).model
        if model.pretrained == "openai":
            assert resolve_quick_gelu(model.quick_gelu, model.backbone, model.pretrained), name
            checked += 1
    assert checked >= 10


def test_openai_tag_builds_a_quick_gelu_tower_without_downloading():
    """The tag's config is resolved for real; only the download and weight load are mocked."""
    import open_clip.factory

    with mock.patch.object(open_clip.factory, "download_pretrained", return_value="weights.pt"), \
            mock.patch.object(open_clip.factory, "load_checkpoint") as load:
        backbone = build_backbone(ModelConfig(backbone="ViT-B-16", pretrained="openai"))
    assert load.call_args.args[1] == "weights.pt"
    assert backbone.source["activation"] == "QuickGELU"
    assert all(type(b.mlp.gelu).__name__ == "QuickGELU" for b in backbone.blocks)
    text_blocks = backbone.text.model.transformer.resblocks  # the text tower too
    assert all(type(b.mlp.gelu).__name__ == "QuickGELU" for b in text_blocks)


def manual_tower(visual, images, quick):
    """The tiny CLIP image tower written out: patches, ln_pre, blocks with explicit
    attention and an MLP whose activation is ``x * sigmoid(1.702 x)`` (or exact GELU),
    ln_post of the class token."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    for block in visual.transformer.resblocks:
        attn = block.attn
        h = block.ln_1(x)
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        heads, width = attn.num_heads, x.shape[-1]
        q, k, v = (t.view(t.shape[0], t.shape[1], heads, width // heads).transpose(1, 2)
                   for t in (q, k, v))
        weights = (q @ k.transpose(-1, -2) / (width // heads) ** 0.5).softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(x.shape)
        x = x + attn.out_proj(out)
        h = block.mlp.c_fc(block.ln_2(x))
        h = h * torch.sigmoid(1.702 * h) if quick else F.gelu(h)
        x = x + block.mlp.c_proj(h)
    return visual.ln_post(x[:, 0])


@pytest.mark.parametrize("setting, quick", [(True, True), (False, False), ("auto", False)])
def test_tiny_tower_output_equals_the_hand_computed_activation(setting, quick):
    backbone = build_backbone(ModelConfig(backbone="tiny-vit", pretrained="none", quick_gelu=setting,
                                          image_size=32))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = backbone(images)
        same = manual_tower(backbone.visual, images, quick)
        other = manual_tower(backbone.visual, images, not quick)
    assert torch.allclose(ours, same, atol=1e-5)
    assert not torch.allclose(ours, other, atol=1e-3)  # the activation is visible in the output
