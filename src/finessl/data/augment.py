"""Weak, strong and test transforms (FixMatch-style, as the FineSSL recipe uses them).

At 224 px: weak = Resize(256) -> RandomCrop(224, pad 28, reflect) -> flip; strong = weak +
RandAugment (2 ops, magnitude uniform up to 10) + Cutout; test = Resize((224, 224)). Other
resolutions scale the resize and padding in proportion.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchvision import transforms as T


@dataclass
class Transforms:
    weak: T.Compose
    strong: T.Compose
    test: T.Compose


def _to_rgb(image):
    return image.convert("RGB") if image.mode != "RGB" else image


# FixMatch's RandAugment operations, by timm's names. "PosterizeOriginal" keeps 4-8 bits
# (timm's default Posterize can ask Pillow for 0 bits, which Pillow >= 11 rejects).
FIXMATCH_OPS = (
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "PosterizeOriginal",
    "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateXRel", "TranslateYRel",
)


def fixmatch_randaugment(mean) -> T.Compose:
    """Two random ops per image, each applied with p=0.5 at a magnitude uniform in [0, 10]."""
    from timm.data.auto_augment import RandAugment, rand_augment_ops

    hparams = {"img_mean": tuple(round(255 * m) for m in mean), "magnitude_std": float("inf")}
    ops = rand_augment_ops(magnitude=10, prob=0.5, hparams=hparams, transforms=list(FIXMATCH_OPS))
    return RandAugment(ops, num_layers=2)


def build_transforms(image_size: int, mean, std) -> Transforms:
    resize = round(image_size * 256 / 224)
    pad = round(image_size * 28 / 224)
    base = [
        T.Lambda(_to_rgb),
        T.Resize(resize),
        T.RandomCrop(image_size, padding=pad, padding_mode="reflect"),
        T.RandomHorizontalFlip(),
    ]
    normalize = [T.ToTensor(), T.Normalize(mean, std)]
    randaugment = fixmatch_randaugment(mean)
    # Cutout: one gray square of up to half the side (a quarter of the area).
    cutout = T.RandomErasing(p=1.0, scale=(0.02, 0.25), ratio=(1.0, 1.0), value=0.5)
    return Transforms(
        weak=T.Compose(base + normalize),
        strong=T.Compose(base + [randaugment, T.ToTensor(), cutout, T.Normalize(mean, std)]),
        test=T.Compose([T.Lambda(_to_rgb), T.Resize((image_size, image_size))] + normalize),
    )


def raw_transform() -> T.Compose:
    """PIL image -> uint8 RGB tensor at its own size, for augmentation on the device."""
    return T.Compose([T.Lambda(_to_rgb), T.PILToTensor()])
