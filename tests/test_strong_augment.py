"""The reference strong augmentation on both paths (PIL per image, batched on the device).

Parameter values are worked out by hand from the recipe: an integer magnitude v in 1..9,
enhance factor 0.9 v/10 + 0.05, Posterize bits int(4 v/10) + 4, Rotate int(30 v/10)
degrees, Shear 0.3 v/10, Translate 0.3 v/10 of the side, Solarize threshold
256 - int(256 v/10), Cutout side 16/224 of the image side.
"""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from finessl.data import randaugment as ref
from finessl.data.augment import build_transforms
from finessl.data.gpu_augment import BatchAugment, apply_reference_op

GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def test_parameter_table_by_hand():
    assert [ref.enhance_factor(v) for v in (1, 5, 9)] == pytest.approx([0.14, 0.5, 0.86])
    assert [ref.posterize_bits(v) for v in range(1, 10)] == [4, 4, 5, 5, 6, 6, 6, 7, 7]
    assert [ref.rotate_degrees(v) for v in (1, 5, 9)] == [3, 15, 27]
    assert [ref.shear_amount(v) for v in (1, 5, 9)] == pytest.approx([0.03, 0.15, 0.27])
    assert [ref.translate_fraction(v) for v in (1, 5, 9)] == pytest.approx([0.03, 0.15, 0.27])
    assert [ref.solarize_threshold(v) for v in (1, 5, 9)] == [231, 128, 26]
    assert ref.cutout_side(224) == 16 and ref.cutout_side(64) == 5 and ref.cutout_side(32) == 2
    assert len(ref.OPS) == 14 and "Identity" in ref.OP_NAMES


def test_sampling_two_ops_with_replacement_integer_magnitudes_half_applied():
    augment = ref.ReferenceRandAugment(num_ops=2)
    rng = random.Random(0)
    draws = [d for _ in range(5000) for d in augment.sample(rng)]
    assert len(draws) == 10000
    assert {d.magnitude for d in draws} == set(range(1, 10))
    assert {d.op.name for d in draws} == set(ref.OP_NAMES)
    assert {d.sign for d in draws} == {-1, 1}
    assert abs(np.mean([d.applied for d in draws]) - 0.5) < 0.02
    pairs = [augment.sample(rng) for _ in range(3000)]
    assert any(a.op is b.op for a, b in pairs)  # with replacement


def gradient_image(size=64):
    x = np.linspace(0, 255, size)
    pixels = np.stack([np.add.outer(x, x) / 2, np.tile(x, (size, 1)), np.tile(x[:, None], (1, size))], -1)
    return Image.fromarray(pixels.astype(np.uint8))


def test_pil_operations_by_hand():
    flat = Image.new("RGB", (100, 100), (200, 130, 100))
    by_name = {op.name: op for op in ref.OPS}
    assert by_name["Brightness"].apply(flat, 5, 1).getpixel((0, 0)) == (100, 65, 50)
    assert by_name["Solarize"].apply(flat, 5, 1).getpixel((0, 0)) == (55, 125, 100)
    assert by_name["Posterize"].apply(flat, 9, 1).getpixel((0, 0)) == (200, 130, 100)  # 7 bits
    assert by_name["Posterize"].apply(flat, 1, 1).getpixel((0, 0)) == (192, 128, 96)  # 4 bits
    assert by_name["Identity"].apply(flat, 9, 1) is flat
    # Translate by 0.15 x 100 = 15 px: a white column at x = 50 moves to x = 35 (sign +1)
    marked = Image.new("RGB", (100, 100))
    marked.paste((255, 255, 255), (50, 0, 51, 100))
    moved = np.asarray(by_name["TranslateX"].apply(marked, 5, 1))[50, :, 0]
    assert int(np.argmax(moved)) == 35 and moved[0] == 0  # black fill elsewhere
    moved = np.asarray(by_name["TranslateX"].apply(marked, 5, -1))[50, :, 0]
    assert int(np.argmax(moved)) == 65


@pytest.mark.parametrize("size, cx, want", [
    (224, 100.0, (92, 92, 108, 108)),   # interior: 16 x 16
    (224, 3.0, (0, 0, 16, 16)),         # near the top-left: shifted, still 16 wide
    (224, 220.0, (212, 212, 224, 224)),  # near the bottom-right: clipped to 12
    (64, 30.0, (27, 27, 32, 32)),       # 64 px: side 5
])
def test_cutout_box(size, cx, want):
    assert ref.cutout_box(size, size, ref.cutout_side(size), cx, cx) == want


def gray_mask(array):
    return np.all(array == ref.CUTOUT_GRAY, axis=-1)


@pytest.mark.parametrize("size", [224, 64])
def test_pil_cutout_is_one_gray_square_of_the_scaled_side(size):
    augment = ref.ReferenceRandAugment(num_ops=0)
    image = Image.new("RGB", (size, size), (10, 200, 30))
    side = ref.cutout_side(size)
    areas = []
    for seed in range(40):
        random.seed(seed)
        mask = gray_mask(np.asarray(augment(image)))
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert mask.sum() == len(rows) * len(cols)  # a rectangle
        assert len(rows) <= side and len(cols) <= side
        areas.append(mask.sum())
    assert max(areas) == side * side


def test_device_draws_and_cutout():
    aug = BatchAugment(224, (0.0,) * 3, (1.0,) * 3, strong=True)
    layers = aug.draw(4000, torch.Generator().manual_seed(0), "cpu")
    assert len(layers) == 2
    for layer in layers:
        assert set(layer["magnitude"].tolist()) == set(range(1, 10))
        assert set(layer["op"].tolist()) == set(range(14))
        assert abs(layer["applied"].float().mean().item() - 0.5) < 0.03
    x = torch.full((50, 3, 224, 224), 0.2)
    out = aug.cutout(x, torch.Generator().manual_seed(1))
    gray = (out - ref.CUTOUT_GRAY / 255).abs().amax(dim=1) < 1e-6
    counts = gray.flatten(1).sum(1)
    assert counts.max().item() == 256 and counts.min().item() > 0
    small = BatchAugment(64, (0.0,) * 3, (1.0,) * 3, strong=True).cutout(
        torch.full((50, 3, 64, 64), 0.2), torch.Generator().manual_seed(1))
    assert ((small - ref.CUTOUT_GRAY / 255).abs().amax(dim=1) < 1e-6).flatten(1).sum(1).max() == 25


def photo_set(size=64):
    """A fixed set of real photos (scikit-image) and a synthetic gradient."""
    skimage_data = pytest.importorskip("skimage.data")
    images = [Image.fromarray(getattr(skimage_data, name)()).convert("RGB").resize((size, size))
              for name in ("astronaut", "coffee", "chelsea", "rocket")]
    return images + [gradient_image(size)]


def as_tensor(images):
    arrays = [torch.from_numpy(np.asarray(i).copy()).permute(2, 0, 1) for i in images]
    return torch.stack(arrays).float() / 255


@pytest.mark.parametrize("name", ref.OP_NAMES)
def test_each_operation_changes_pixels_alike_on_both_paths(name):
    """Mean absolute pixel change of every op at magnitudes 2, 5 and 8 (sign +1) on real
    photos: the PIL reference and the device version agree."""
    images = photo_set()
    x = as_tensor(images)
    op = {o.name: o for o in ref.OPS}[name]
    for v in (2, 5, 8):
        pil = as_tensor([op.apply(image, v, 1) for image in images])
        device = apply_reference_op(name, x, torch.full((len(images),), v), torch.ones(len(images)))
        assert device.shape == x.shape and device.min() >= -1e-5 and device.max() <= 1 + 1e-5
        change_pil = (pil - x).abs().mean().item()
        change_dev = (device - x).abs().mean().item()
        assert change_dev == pytest.approx(change_pil, abs=0.004, rel=0.08), (name, v)
        if name not in GEOMETRIC:  # pixel-wise ops agree pixel by pixel, up to rounding
            assert (pil - device).abs().mean().item() < 0.01, (name, v)


def test_whole_strong_recipe_agrees_statistically_between_paths():
    images = photo_set()
    x = (as_tensor(images) * 255).round().to(torch.uint8)
    pil_aug = ref.ReferenceRandAugment()
    dev_aug = BatchAugment(64, (0.0,) * 3, (1.0,) * 3, strong=True)
    pil_changes, dev_changes = [], []
    base = x.float() / 255
    for seed in range(120):
        random.seed(seed)
        pil = as_tensor([pil_aug(image) for image in images])
        pil_changes += (pil - base).abs().mean(dim=(1, 2, 3)).tolist()
        generator = torch.Generator().manual_seed(seed)
        dev = dev_aug.cutout(dev_aug.randaugment(base, generator), generator)
        dev_changes += (dev - base).abs().mean(dim=(1, 2, 3)).tolist()
    assert np.mean(dev_changes) == pytest.approx(np.mean(pil_changes), rel=0.12)
    assert np.std(dev_changes) == pytest.approx(np.std(pil_changes), rel=0.2)
    assert np.mean(np.array(pil_changes) < 0.01) > 0.1  # some views only get a Cutout


def test_recipes_are_selectable_and_unknown_names_rejected():
    from finessl.errors import ConfigError

    reference = build_transforms(64, (0.5,) * 3, (0.5,) * 3)
    assert any(isinstance(t, ref.ReferenceRandAugment) for t in reference.strong.transforms)
    wide = build_transforms(64, (0.5,) * 3, (0.5,) * 3, "wide")
    assert not any(isinstance(t, ref.ReferenceRandAugment) for t in wide.strong.transforms)
    random.seed(0)
    assert wide.strong(gradient_image()).shape == (3, 64, 64)
    with pytest.raises(ConfigError, match="Choices"):
        build_transforms(64, (0.5,) * 3, (0.5,) * 3, "strongest")
