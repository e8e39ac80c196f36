"""The strong augmentation of the FineSSL recipe: FixMatch's RandAugment and a fixed Cutout.

Applied to the weak view (resize, crop, flip) of a PIL image, per image:

* 2 operations drawn with replacement from the 14 in ``OPS``; each is applied with
  probability 0.5 at an integer magnitude ``v`` uniform in 1..9;
* the magnitude maps to a parameter by the functions below (the same table drives the
  batched device path in ``gpu_augment.py``); geometric operations take a random sign and
  fill with black;
* then always a gray (127) square Cutout whose side is 16/224 of the image side, centred
  at a uniform random point: its top-left corner is clipped to the image, then its far
  edges (so a square at the left or top border keeps its full side).

Randomness comes from Python's ``random``, which the data pipeline seeds per item.
``WIDE`` names the broader recipe finessl used before (timm's RandAugment with magnitudes
up to 10 either side of identity, plus a Cutout of 2-25 % of the area) for comparison.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageEnhance, ImageOps

MAX_MAGNITUDE = 10  # magnitudes are drawn from 1 .. MAX_MAGNITUDE - 1
CUTOUT_FRACTION = 16 / 224  # side of the Cutout square relative to the image side
CUTOUT_GRAY = 127


# --------------------------------------------------------------------------- parameters


def enhance_factor(v: int) -> float:
    """Brightness / Color / Contrast / Sharpness: 0.14 .. 0.86 (never above 1)."""
    return 0.9 * v / 10 + 0.05


def posterize_bits(v: int) -> int:
    return int(4 * v / 10) + 4


def rotate_degrees(v: int) -> int:
    return int(30 * v / 10)


def shear_amount(v: int) -> float:
    return 0.3 * v / 10


def translate_fraction(v: int) -> float:
    """Translation as a fraction of the image side."""
    return 0.3 * v / 10


def solarize_threshold(v: int) -> int:
    """Pixels at or above this value (0-255) are inverted."""
    return 256 - int(256 * v / 10)


def cutout_side(image_side: int) -> int:
    return max(1, round(image_side * CUTOUT_FRACTION))


# --------------------------------------------------------------------------- operations


def _enhance(kind) -> Callable[[Image.Image, int, int], Image.Image]:
    return lambda image, v, sign: kind(image).enhance(enhance_factor(v))


def _affine(image: Image.Image, coefficients: tuple) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, coefficients)


@dataclass(frozen=True)
class Op:
    """One operation: ``apply(image, v, sign)``; ``signed`` ops use the sign (+1 / -1)."""

    name: str
    apply: Callable[[Image.Image, int, int], Image.Image]
    signed: bool = False


OPS: tuple[Op, ...] = (
    Op("AutoContrast", lambda image, v, sign: ImageOps.autocontrast(image)),
    Op("Brightness", _enhance(ImageEnhance.Brightness)),
    Op("Color", _enhance(ImageEnhance.Color)),
    Op("Contrast", _enhance(ImageEnhance.Contrast)),
    Op("Equalize", lambda image, v, sign: ImageOps.equalize(image)),
    Op("Identity", lambda image, v, sign: image),
    Op("Posterize", lambda image, v, sign: ImageOps.posterize(image, posterize_bits(v))),
    Op("Rotate", lambda image, v, sign: image.rotate(sign * rotate_degrees(v)), signed=True),
    Op("Sharpness", _enhance(ImageEnhance.Sharpness)),
    Op("ShearX", lambda image, v, sign: _affine(image, (1, sign * shear_amount(v), 0, 0, 1, 0)),
       signed=True),
    Op("ShearY", lambda image, v, sign: _affine(image, (1, 0, 0, sign * shear_amount(v), 1, 0)),
       signed=True),
    Op("Solarize", lambda image, v, sign: ImageOps.solarize(image, solarize_threshold(v))),
    Op("TranslateX", lambda image, v, sign: _affine(
        image, (1, 0, sign * translate_fraction(v) * image.size[0], 0, 1, 0)), signed=True),
    Op("TranslateY", lambda image, v, sign: _affine(
        image, (1, 0, 0, 0, 1, sign * translate_fraction(v) * image.size[1])), signed=True),
)
OP_NAMES = tuple(op.name for op in OPS)


@dataclass(frozen=True)
class Draw:
    """One sampled operation: which, at what magnitude and sign, and whether it applies."""

    op: Op
    magnitude: int
    sign: int
    applied: bool


def cutout_box(width: int, height: int, side: int, cx: float, cy: float) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)``, right/bottom exclusive, of a square centred at (cx, cy)."""
    left, top = int(max(0.0, cx - side / 2)), int(max(0.0, cy - side / 2))
    return left, top, int(min(width, left + side)), int(min(height, top + side))


class ReferenceRandAugment:
    """PIL image -> PIL image: ``num_ops`` random operations, then the fixed Cutout."""

    def __init__(self, num_ops: int = 2, cutout: bool = True) -> None:
        self.num_ops, self.cutout = num_ops, cutout

    def sample(self, rng: random.Random | None = None) -> list[Draw]:
        rng = rng or random
        draws = []
        for op in rng.choices(OPS, k=self.num_ops):
            magnitude = rng.randint(1, MAX_MAGNITUDE - 1)
            applied = rng.random() < 0.5
            sign = -1 if rng.random() < 0.5 else 1
            draws.append(Draw(op, magnitude, sign, applied))
        return draws

    def __call__(self, image: Image.Image) -> Image.Image:
        for draw in self.sample():
            if draw.applied:
                image = draw.op.apply(image, draw.magnitude, draw.sign)
        if not self.cutout:
            return image
        width, height = image.size
        box = cutout_box(width, height, cutout_side(width), random.uniform(0, width),
                         random.uniform(0, height))
        image = image.copy()
        if box[2] > box[0] and box[3] > box[1]:
            ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1),
                                            fill=(CUTOUT_GRAY,) * len(image.getbands()))
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_ops={self.num_ops}, ops={len(OPS)}, cutout={self.cutout})"
