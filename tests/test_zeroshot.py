"""CLIP text side: zero-shot logits and the text-initialised head (docs/method.md, "The model")."""

import torch
import torch.nn.functional as F

from finessl.models import build_model
from finessl.models.zeroshot import zeroshot_logits

CLASSES = ["cat", "dog", "airplane", "ship"]


def test_text_initialised_head_reproduces_zero_shot(tiny_vit_config):
    tiny_vit_config.head_init = "text"
    tiny_vit_config.peft = "linear"
    torch.manual_seed(0)
    model = build_model(tiny_vit_config, len(CLASSES), classes=CLASSES).eval()
    backbone = model.backbone
    text = backbone.text.embed(CLASSES, "a photo of a {}.")
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        zero_shot = zeroshot_logits(backbone, x, text)
        head = model(x)
        z = backbone(x)
    # w_k = proj t_k, so head_k * |w_k| / s = <z, proj t_k> / |z| = zero-shot_k * |z proj| / (100 |z|)
    w_norm = model.head.weight.norm(dim=1)
    rescaled = head * w_norm / model.head.scale
    factor = (z @ backbone.visual.proj).norm(dim=1, keepdim=True) / (100 * z.norm(dim=1, keepdim=True))
    assert torch.allclose(rescaled, zero_shot * factor, atol=1e-5)
    assert torch.equal(rescaled.argmax(1), zero_shot.argmax(1))
    assert torch.equal(model.aux_head.weight, model.head.weight)


def test_zero_shot_is_clip_own_similarity(tiny_vit_config):
    model = build_model(tiny_vit_config, len(CLASSES))
    clip = model.backbone.text.model.eval()
    text = model.backbone.text.embed(CLASSES, "a photo of a {}.")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model.backbone.peft.clear()
        ours = zeroshot_logits(model.backbone, x, text)
        theirs = 100 * F.normalize(clip.encode_image(x), dim=-1) @ text.t()
    assert torch.allclose(ours, theirs, atol=1e-4)
