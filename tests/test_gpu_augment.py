"""Batched device augmentation (runs on the CPU here, the same code as on a GPU)."""

import pytest
import torch

from finessl.data.gpu_augment import WIDE_OPS, BatchAugment, apply_reference_op, apply_wide_op
from finessl.data.randaugment import OP_NAMES


def images(n=6, size=20, channels=3):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def test_shapes_normalisation_and_per_sample_randomness():
    aug = BatchAugment(32, (0.5,) * 3, (0.25,) * 3, strong=True)
    out = aug(images(), torch.Generator().manual_seed(1))
    wide = BatchAugment(32, (0.5,) * 3, (0.25,) * 3, strong=True, recipe="wide")
    assert wide(images(), torch.Generator().manual_seed(1)).shape == out.shape
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    raw = out * 0.25 + 0.5
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert not torch.allclose(out[0], out[1])  # per-sample draws, not one per batch
    again = aug(images(), torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # seeded: reproducible and resumable


def test_weak_view_is_a_crop_of_the_resized_image_or_its_mirror():
    aug = BatchAugment(16, (0.0,) * 3, (1.0,) * 3, strong=False)
    flat = torch.full((2, 1, 14, 14), 200, dtype=torch.uint8)  # grayscale becomes RGB
    out = aug(flat, torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, torch.full_like(out, 200 / 255), atol=1e-5)


@pytest.mark.parametrize("name", WIDE_OPS)
def test_every_wide_operation_keeps_range_and_is_identity_at_magnitude_zero(name):
    x = images(4, 16).float() / 255
    sign = torch.tensor([1, -1, 1, -1])
    out = apply_wide_op(name, x, torch.full((4,), 10.0), sign)
    assert out.shape == x.shape and out.min() >= -1e-5 and out.max() <= 1 + 1e-5
    if name not in ("Equalize", "AutoContrast"):
        zero = apply_wide_op(name, x, torch.zeros(4), sign)
        if name == "Posterize":  # magnitude 0 keeps 4 bits
            assert torch.allclose(zero, ((x * 255).round().to(torch.uint8) & 0xF0).float() / 255)
        elif name == "Solarize":  # threshold 256: nothing flips
            assert torch.allclose(zero, x, atol=1e-6)
        else:  # identity at magnitude 0
            assert torch.allclose(zero, x, atol=1e-4), name


@pytest.mark.parametrize("name", OP_NAMES)
def test_every_reference_operation_keeps_range_and_shape(name):
    x = images(4, 16).float() / 255
    for v in (1, 9):
        out = apply_reference_op(name, x, torch.full((4,), v), torch.tensor([1, -1, 1, -1]))
        assert out.shape == x.shape and out.min() >= -1e-5 and out.max() <= 1 + 1e-5


def test_solarize_by_hand():
    x = torch.tensor([0.2, 0.6, 0.9]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    out = apply_wide_op("Solarize", x, torch.tensor([5.0]), torch.ones(1))  # threshold 128
    assert out[0, 0, 0].tolist() == pytest.approx([51 / 255, 102 / 255, 25 / 255])
    out = apply_reference_op("Solarize", x, torch.tensor([5]), torch.ones(1))  # 256 - 128 = 128
    assert out[0, 0, 0].tolist() == pytest.approx([51 / 255, 102 / 255, 25 / 255])


def test_training_with_gpu_augment_on_cpu(tmp_path):
    from finessl.config import apply_overrides, load_preset
    from finessl.run import train

    cfg = apply_overrides(load_preset("smoke"), {"data.gpu_augment": "true", "train.steps": "3",
                                                 "train.tensorboard": "false"})
    final = train(cfg, tmp_path / "run", callbacks=[])
    assert final["steps"] == 3
