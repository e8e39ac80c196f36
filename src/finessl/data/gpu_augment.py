"""Weak / strong augmentation of whole batches on the training device.

For datasets that fit in memory (CIFAR, Fashion-MNIST), a few CPU cores cannot feed a GPU
with PIL augmentations of four views per image. With ``data.gpu_augment`` the loaders
return raw uint8 images and this module applies, per sample with its own random draws,
the same recipe as ``augment.py``: resize, reflect-padded random crop, horizontal flip;
for strong views also two RandAugment operations (each with p = 0.5 and a magnitude
uniform in [0, 10]) and Cutout; then normalisation. Randomness comes from a generator
seeded by (seed, step), so runs stay reproducible and resumable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OPS = ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Posterize", "Rotate",
       "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")
GRAY = 0.5


def _blend(image: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (other + factor.view(-1, 1, 1, 1) * (image - other)).clamp(0, 1)


def _signed(magnitude: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    sign = torch.randint(0, 2, magnitude.shape, generator=generator, device=magnitude.device) * 2 - 1
    return magnitude / 10 * scale * sign


def _affine(image: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Applies per-sample 2x3 affine matrices (normalised coordinates), gray fill."""
    grid = F.affine_grid(matrix, list(image.shape), align_corners=False)
    shifted = F.grid_sample(image - GRAY, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    return shifted + GRAY


def apply_op(name: str, image: torch.Tensor, magnitude: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
    """One RandAugment operation on ``[n, 3, H, W]`` floats in [0, 1], magnitudes in [0, 10]."""
    n = image.shape[0]
    eye = torch.eye(2, 3, device=image.device).repeat(n, 1, 1)
    if name == "AutoContrast":
        low = image.amin(dim=(2, 3), keepdim=True)
        high = image.amax(dim=(2, 3), keepdim=True)
        return torch.where(high > low, (image - low) / (high - low).clamp(min=1e-6), image)
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        factor = 1 + _signed(magnitude, 0.9, generator)
        if name == "Brightness":
            return _blend(image, torch.zeros_like(image), factor)
        gray = (0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]).unsqueeze(1)
        if name == "Color":
            return _blend(image, gray.expand_as(image), factor)
        if name == "Contrast":
            return _blend(image, gray.mean(dim=(2, 3), keepdim=True).expand_as(image), factor)
        kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=image.dtype,
                              device=image.device) / 13
        blurred = F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"),
                           kernel.expand(3, 1, 3, 3), groups=3)
        return _blend(image, blurred, factor)
    if name == "Equalize":
        from torchvision.transforms.v2.functional import equalize

        return equalize((image * 255).round().to(torch.uint8)).float() / 255
    if name == "Posterize":
        bits = (4 + (magnitude / 10 * 4).long()).clamp(4, 8)  # keep 4..8 bits
        mask = (255 - (2 ** (8 - bits) - 1)).to(torch.uint8).view(-1, 1, 1, 1)
        return ((image * 255).round().to(torch.uint8) & mask).float() / 255
    if name == "Solarize":
        threshold = (1 - magnitude / 10).view(-1, 1, 1, 1)
        return torch.where(image >= threshold, 1 - image, image)
    if name == "Rotate":
        angle = _signed(magnitude, 30.0, generator) * math.pi / 180
        cos, sin = angle.cos(), angle.sin()
        eye[:, 0, 0], eye[:, 0, 1], eye[:, 1, 0], eye[:, 1, 1] = cos, -sin, sin, cos
        return _affine(image, eye)
    if name in ("ShearX", "ShearY"):
        eye[:, 0 if name == "ShearX" else 1, 1 if name == "ShearX" else 0] = \
            _signed(magnitude, 0.3, generator)
        return _affine(image, eye)
    if name in ("TranslateX", "TranslateY"):
        eye[:, 0 if name == "TranslateX" else 1, 2] = _signed(magnitude, 0.45 * 2, generator)
        return _affine(image, eye)
    raise ValueError(f"unknown operation {name!r}")


class BatchAugment:
    """Callable: uint8 ``[N, C, H, W]`` (C = 1 or 3) -> normalised float ``[N, 3, S, S]``."""

    def __init__(self, image_size: int, mean, std, strong: bool, num_ops: int = 2) -> None:
        self.size, self.strong, self.num_ops = image_size, strong, num_ops
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
            x = self._randaugment(x, generator)
            x = self._cutout(x, generator)
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

    def _randaugment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        for _ in range(self.num_ops):
            choice = torch.randint(0, len(OPS), (n,), generator=generator, device=x.device)
            apply = torch.rand(n, generator=generator, device=x.device) < 0.5
            magnitude = torch.rand(n, generator=generator, device=x.device) * 10
            out = x.clone()
            for k, name in enumerate(OPS):
                chosen = torch.nonzero((choice == k) & apply).flatten()
                if chosen.numel():
                    out[chosen] = apply_op(name, x[chosen], magnitude[chosen], generator)
            x = out
        return x

    def _cutout(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        side = (torch.rand(n, generator=generator, device=x.device) * 0.5 * self.size).long()
        cy = torch.randint(0, h, (n,), generator=generator, device=x.device)
        cx = torch.randint(0, w, (n,), generator=generator, device=x.device)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        half = (side // 2).view(-1, 1, 1)
        box = ((ys - cy.view(-1, 1, 1)).abs() <= half) & ((xs - cx.view(-1, 1, 1)).abs() <= half)
        box &= (side > 0).view(-1, 1, 1)
        return torch.where(box.unsqueeze(1), torch.full_like(x, GRAY), x)
