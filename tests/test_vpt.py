"""VPT-deep on a tiny open_clip ViT: parameter count, frozen weights, effect on outputs."""

import copy

import torch

from finessl.algorithms import build_algorithm
from finessl.config import AlgorithmConfig
from finessl.engine.trainer import Trainer  # noqa: F401  (engine imports cleanly)
from finessl.models import build_model


def test_trainable_count_is_layers_tokens_width(tiny_vit_config):
    model = build_model(tiny_vit_config, num_classes=5)
    backbone = model.backbone
    prompts = [p for n, p in model.named_parameters() if p.requires_grad and "prompts" in n]
    assert sum(p.numel() for p in prompts) == backbone.num_layers * 3 * backbone.width == 2 * 3 * 64
    backbone_trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert backbone_trainable == ["peft.vpt_deep.prompts"]
    heads = 2 * (5 * backbone.num_features + 1)
    assert model.num_trainable_parameters() == 2 * 3 * 64 + heads


def test_prompt_init_bound(tiny_vit_config):
    model = build_model(tiny_vit_config, num_classes=5)
    bound = (6.0 / (3 * 8 * 8 + 64)) ** 0.5
    prompts = model.backbone.peft["vpt_deep"].prompts
    assert prompts.abs().max() <= bound and prompts.abs().max() > 0.8 * bound


def test_prompts_change_output_and_step_changes_only_them(tiny_vit_config):
    torch.manual_seed(0)
    model = build_model(tiny_vit_config, num_classes=4)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        with_prompts = model.features(x)
        vpt = model.backbone.peft.pop("vpt_deep")
        without = model.features(x)
        model.backbone.peft["vpt_deep"] = vpt
    assert not torch.allclose(with_prompts, without, atol=1e-4)

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    prompts_before = vpt.prompts.detach().clone()
    algo = build_algorithm(AlgorithmConfig(name="finessl"), 4, 10)
    from finessl.algorithms import Batch

    batch = Batch(images=x[:4], labels=torch.tensor([0, 1, 2, 3]),
                  unlabeled_index=torch.arange(4), weak=torch.randn(4, 3, 32, 32),
                  strong=[torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    algo.step(model, batch).loss.backward()
    optimizer.step()
    for name, before in frozen.items():
        assert torch.equal(before, dict(model.named_parameters())[name]), name
    assert not torch.equal(prompts_before, vpt.prompts)


def test_frozen_layernorm_and_copies_are_independent(tiny_vit_config):
    model = build_model(tiny_vit_config, num_classes=3)
    twin = copy.deepcopy(model)
    assert torch.equal(model.head.weight, model.aux_head.weight)
    assert model.head.weight.data_ptr() != model.aux_head.weight.data_ptr()
    assert twin.num_trainable_parameters() == model.num_trainable_parameters()
