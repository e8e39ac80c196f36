"""Weak, strong and test transforms (FixMatch-style, as the FineSSL recipe uses them).

At 224 px: weak = Resize(256) -> RandomCrop(224, pad 28, reflect) -> flip; strong = weak +
a strong recipe (``STRONG_RECIPES``); test = Resize((224, 224)). Other resolutions scale
the resize, padding and Cutout in proportion.

* ``reference`` (default): FixMatch's RandAugment as the FineSSL authors run it
  (``randaugment.py``): 14 ops incl. Identity, integer magnitudes 1-9, a 16/224 Cutout;
* ``wide``: timm's RandAugment over 13 ops with magnitudes uniform in [0, 10], enhance
  factors 0.1-1.9, translation up to 45 %, and a Cutout of 2-25 % of the area.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchvision import transforms as T

from finessl.errors import ConfigError
from finessl.registry import unknown_name_message


@dataclass
class Transforms:
    weak: T.Compose
    strong: T.Compose
    test: T.Compose


def _to_rgb(image):
    return image.convert("RGB") if image.mode != "RGB" else image


# The wide recipe's operations, by timm's names. "PosterizeOriginal" keeps 4-8 bits
# (timm's default Posterize can ask Pillow for 0 bits, which Pillow >= 11 rejects).
WIDE_OPS = (
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "PosterizeOriginal",
    "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateXRel", "TranslateYRel",
)


def wide_strong(mean, std) -> list:
    """timm's RandAugment (2 ops, p=0.5, magnitude uniform in [0, 10]) + area-based Cutout."""
    from timm.data.auto_augment import RandAugment, rand_augment_ops

    hparams = {"img_mean": tuple(round(255 * m) for m in mean), "magnitude_std": float("inf")}
    ops = rand_augment_ops(magnitude=10, prob=0.5, hparams=hparams, transforms=list(WIDE_OPS))
    cutout = T.RandomErasing(p=1.0, scale=(0.02, 0.25), ratio=(1.0, 1.0), value=0.5)
    return [RandAugment(ops, num_layers=2), T.ToTensor(), cutout, T.Normalize(mean, std)]


def reference_strong(mean, std) -> list:
    """The FineSSL authors' RandAugment (2 of 14 ops, magnitudes 1-9) + a 16/224 Cutout."""
    from finessl.data.randaugment import ReferenceRandAugment

    return [ReferenceRandAugment(num_ops=2), T.ToTensor(), T.Normalize(mean, std)]


STRONG_RECIPES = {"reference": reference_strong, "wide": wide_strong}


def build_transforms(image_size: int, mean, std, strong_recipe: str = "reference") -> Transforms:
    resize = round(image_size * 256 / 224)
    pad = round(image_size * 28 / 224)
    base = [
        T.Lambda(_to_rgb),
        T.Resize(resize),
        T.RandomCrop(image_size, padding=pad, padding_mode="reflect"),
        T.RandomHorizontalFlip(),
    ]
    normalize = [T.ToTensor(), T.Normalize(mean, std)]
    if strong_recipe not in STRONG_RECIPES:
        raise ConfigError(unknown_name_message("data.strong_augment", strong_recipe,
                                               list(STRONG_RECIPES)))
    return Transforms(
        weak=T.Compose(base + normalize),
        strong=T.Compose(base + STRONG_RECIPES[strong_recipe](mean, std)),
        test=T.Compose([T.Lambda(_to_rgb), T.Resize((image_size, image_size))] + normalize),
    )


def raw_transform() -> T.Compose:
    """PIL image -> uint8 RGB tensor at its own size, for augmentation on the device."""
    return T.Compose([T.Lambda(_to_rgb), T.PILToTensor()])
