"""Weak / strong augmentation of whole batches on the training device.

For datasets that fit in memory (CIFAR, Fashion-MNIST), a few CPU cores cannot feed a GPU
with PIL augmentations of four views per image. With ``data.gpu_augment`` the loaders
return raw uint8 images and this module applies, per sample with its own random draws,
the recipe of ``augment.py``: resize, reflect-padded random crop, horizontal flip; for
strong views the chosen recipe (``reference``: the 14 operations and parameter table of
``randaugment.py`` with integer magnitudes 1-9, black fill and the fixed 16/224 Cutout;
``wide``: 13 operations, magnitudes uniform in [0, 10] either side of identity, gray fill
and an area-based Cutout); then normalisation. Randomness comes from a generator seeded
by (seed, step), so runs stay reproducible and resumable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from finessl.data import randaugment as ref

WIDE_OPS = ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Posterize", "Rotate",
            "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")
GRAY = 0.5
CUTOUT_GRAY = ref.CUTOUT_GRAY / 255


# --------------------------------------------------------------------------- primitives


def _blend(image: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (other + factor.view(-1, 1, 1, 1) * (image - other)).clamp(0, 1)


def _gray(image: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, as PIL's ``convert("L")``: ``[n, 1, H, W]``."""
    return (0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]).unsqueeze(1)


def _smoothed(image: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (``[[1,1,1],[1,5,1],[1,1,1]] / 13``); border pixels kept."""
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=image.dtype,
                          device=image.device) / 13
    inner = F.conv2d(image, kernel.expand(3, 1, 3, 3), groups=3)
    out = image.clone()
    out[..., 1:-1, 1:-1] = inner
    return out


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image * 255).round().to(torch.uint8)


def _autocontrast(image: torch.Tensor) -> torch.Tensor:
    low = image.amin(dim=(2, 3), keepdim=True)
    high = image.amax(dim=(2, 3), keepdim=True)
    return torch.where(high > low, (image - low) / (high - low).clamp(min=1e-6), image)


def _equalize(image: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.v2.functional import equalize

    return equalize(_to_uint8(image)).float() / 255


def _posterize(image: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    mask = (255 - (2 ** (8 - bits) - 1)).to(torch.uint8).view(-1, 1, 1, 1)
    return (_to_uint8(image) & mask).float() / 255


def _solarize(image: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Inverts pixels at or above ``threshold`` (on the 0-255 scale)."""
    pixels = _to_uint8(image).int()
    flipped = torch.where(pixels >= threshold.view(-1, 1, 1, 1), 255 - pixels, pixels)
    return flipped.float() / 255


def _affine(image: torch.Tensor, matrix: torch.Tensor, fill: float) -> torch.Tensor:
    """Per-sample 2x3 matrices mapping output to input (normalised coordinates)."""
    grid = F.affine_grid(matrix, list(image.shape), align_corners=False)
    moved = F.grid_sample(image - fill, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    return moved + fill


def _identity_matrices(image: torch.Tensor) -> torch.Tensor:
    return torch.eye(2, 3, device=image.device).repeat(image.shape[0], 1, 1)


def _rotate(image: torch.Tensor, degrees: torch.Tensor, fill: float) -> torch.Tensor:
    """Counter-clockwise by ``degrees`` about the centre, as PIL's ``rotate``."""
    angle = degrees.float() * math.pi / 180
    matrix = _identity_matrices(image)
    matrix[:, 0, 0], matrix[:, 0, 1] = angle.cos(), -angle.sin()
    matrix[:, 1, 0], matrix[:, 1, 1] = angle.sin(), angle.cos()
    return _affine(image, matrix, fill)


def _shear(image: torch.Tensor, amount: torch.Tensor, axis: int, about_corner: bool,
           fill: float) -> torch.Tensor:
    """PIL's shear ``x_in = x + s y`` (axis 0) / ``y_in = y + s x`` (axis 1), about the
    top-left corner like PIL (``about_corner``) or about the centre."""
    h, w = image.shape[-2:]
    ratio = h / w if axis == 0 else w / h
    matrix = _identity_matrices(image)
    matrix[:, axis, 1 - axis] = amount * ratio
    if about_corner:
        matrix[:, axis, 2] = amount * ratio
    return _affine(image, matrix, fill)


def _translate(image: torch.Tensor, fraction: torch.Tensor, axis: int, fill: float) -> torch.Tensor:
    """Content moves by ``fraction`` of the side (PIL's ``x_in = x + dx``)."""
    matrix = _identity_matrices(image)
    matrix[:, axis, 2] = 2 * fraction
    return _affine(image, matrix, fill)


def _enhance(name: str, image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: a blend between the image and a degenerate version of it."""
    if name == "Brightness":
        return _blend(image, torch.zeros_like(image), factor)
    if name == "Color":
        return _blend(image, _gray(image).expand_as(image), factor)
    if name == "Contrast":
        mean = (_gray(image).mean(dim=(2, 3), keepdim=True) * 255).round() / 255
        return _blend(image, mean.expand_as(image), factor)
    return _blend(image, _smoothed(image), factor)  # Sharpness


ENHANCE = ("Brightness", "Color", "Contrast", "Sharpness")


# --------------------------------------------------------------------------- the two recipes


def apply_reference_op(name: str, image: torch.Tensor, v: torch.Tensor,
                       sign: torch.Tensor) -> torch.Tensor:
    """One operation of the reference recipe on ``[n, 3, H, W]`` floats in [0, 1];
    ``v`` integer magnitudes 1-9, ``sign`` +1 / -1 (used by the geometric operations)."""
    v = v.float()
    sign = sign.float()
    if name == "Identity":
        return image
    if name == "AutoContrast":
        return _autocontrast(image)
    if name == "Equalize":
        return _equalize(image)
    if name in ENHANCE:
        return _enhance(name, image, 0.9 * v / 10 + 0.05)
    if name == "Posterize":
        return _posterize(image, (4 * v / 10).long() + 4)
    if name == "Solarize":
        return _solarize(image, 256 - (256 * v / 10).long())
    if name == "Rotate":
        return _rotate(image, sign * (30 * v / 10).long(), fill=0.0)
    if name in ("ShearX", "ShearY"):
        return _shear(image, sign * 0.3 * v / 10, 0 if name == "ShearX" else 1,
                      about_corner=True, fill=0.0)
    if name in ("TranslateX", "TranslateY"):
        return _translate(image, sign * 0.3 * v / 10, 0 if name == "TranslateX" else 1, fill=0.0)
    raise ValueError(f"unknown operation {name!r}")


def apply_wide_op(name: str, image: torch.Tensor, magnitude: torch.Tensor,
                  sign: torch.Tensor) -> torch.Tensor:
    """One operation of the wide recipe; ``magnitude`` uniform in [0, 10]."""
    signed = magnitude / 10 * sign.float()
    if name == "AutoContrast":
        return _autocontrast(image)
    if name == "Equalize":
        return _equalize(image)
    if name in ENHANCE:
        return _enhance(name, image, 1 + 0.9 * signed)
    if name == "Posterize":
        return _posterize(image, (4 + (magnitude / 10 * 4).long()).clamp(4, 8))
    if name == "Solarize":
        return _solarize(image, (256 * (1 - magnitude / 10)).long())
    if name == "Rotate":
        return _rotate(image, 30.0 * signed, fill=GRAY)
    if name in ("ShearX", "ShearY"):
        return _shear(image, 0.3 * signed, 0 if name == "ShearX" else 1, about_corner=False,
                      fill=GRAY)
    if name in ("TranslateX", "TranslateY"):
        return _translate(image, 0.45 * signed, 0 if name == "TranslateX" else 1, fill=GRAY)
    raise ValueError(f"unknown operation {name!r}")


class BatchAugment:
    """Callable: uint8 ``[N, C, H, W]`` (C = 1 or 3) -> normalised float ``[N, 3, S, S]``."""

    def __init__(self, image_size: int, mean, std, strong: bool, recipe: str = "reference",
                 num_ops: int = 2) -> None:
        if recipe not in ("reference", "wide"):
            raise ValueError(f"unknown strong recipe {recipe!r}")
        self.size, self.strong, self.recipe, self.num_ops = image_size, strong, recipe, num_ops
        self.ops = ref.OP_NAMES if recipe == "reference" else WIDE_OPS
        self.resize = round(image_size * 256 / 224)
        self.pad = round(image_size * 28 / 224)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        device, n = images.device, images.shape[0]
        x = images.float() / 255
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", antialias=True,
                          align_corners=False)
        x = self._crop(F.pad(x, (self.pad,) * 4, mode="reflect"), generator)
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if self.strong:
            x = self.randaugment(x, generator)
            x = self.cutout(x, generator)
        return (x - self.mean.to(device)) / self.std.to(device)

    def _crop(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        s = self.size
        top = torch.randint(0, h - s + 1, (n,), generator=generator, device=x.device)
        left = torch.randint(0, w - s + 1, (n,), generator=generator, device=x.device)
        steps = torch.arange(s, device=x.device)
        rows = (top[:, None] + steps)[:, :, None].expand(n, s, s)
        cols = (left[:, None] + steps)[:, None, :].expand(n, s, s)
        batch = torch.arange(n, device=x.device)[:, None, None].expand(n, s, s)
        return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)

    def draw(self, n: int, generator: torch.Generator, device) -> list[dict[str, torch.Tensor]]:
        """Per layer: op index, applied (p = 0.5), magnitude and sign of each sample."""
        layers = []
        for _ in range(self.num_ops):
            layer = {
                "op": torch.randint(0, len(self.ops), (n,), generator=generator, device=device),
                "applied": torch.rand(n, generator=generator, device=device) < 0.5,
                "sign": torch.randint(0, 2, (n,), generator=generator, device=device) * 2 - 1,
            }
            if self.recipe == "reference":
                layer["magnitude"] = torch.randint(1, ref.MAX_MAGNITUDE, (n,), generator=generator,
                                                   device=device)
            else:
                layer["magnitude"] = torch.rand(n, generator=generator, device=device) * 10
            layers.append(layer)
        return layers

    def randaugment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        apply = apply_reference_op if self.recipe == "reference" else apply_wide_op
        for layer in self.draw(x.shape[0], generator, x.device):
            out = x.clone()
            for k, name in enumerate(self.ops):
                chosen = torch.nonzero((layer["op"] == k) & layer["applied"]).flatten()
                if chosen.numel():
                    out[chosen] = apply(name, x[chosen], layer["magnitude"][chosen],
                                        layer["sign"][chosen])
            x = out
        return x

    def cutout(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        device = x.device
        if self.recipe == "reference":
            side = torch.full((n,), ref.cutout_side(w), device=device)
            cx = torch.rand(n, generator=generator, device=device) * w
            cy = torch.rand(n, generator=generator, device=device) * h
            left = (cx - side / 2).clamp(min=0).floor()
            top = (cy - side / 2).clamp(min=0).floor()
            fill = CUTOUT_GRAY
        else:  # a square of 2-25 % of the area at a uniform position, inside the image
            side = ((torch.rand(n, generator=generator, device=device) * 0.23 + 0.02).sqrt() * w).floor()
            left = (torch.rand(n, generator=generator, device=device) * (w - side + 1)).floor()
            top = (torch.rand(n, generator=generator, device=device) * (h - side + 1)).floor()
            fill = GRAY
        ys = torch.arange(h, device=device).view(1, h, 1)
        xs = torch.arange(w, device=device).view(1, 1, w)
        box = ((ys >= top.view(-1, 1, 1)) & (ys < (top + side).clamp(max=h).view(-1, 1, 1)) &
               (xs >= left.view(-1, 1, 1)) & (xs < (left + side).clamp(max=w).view(-1, 1, 1)))
        return torch.where(box.unsqueeze(1), torch.full_like(x, fill), x)
