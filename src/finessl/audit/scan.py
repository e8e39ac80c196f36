"""One streaming pass over a set of images: features, pixel digests, thumbnails, sizes.

The shared "score a pool" path of the audit: batches are decoded by a worker-parallel
loader, encoded by the model and kept as compact arrays (features in float16, a 16-byte
digest of the decoded pixels, a 16 x 16 grey thumbnail, width and height) — no Python
object per image. Unreadable images are reported and skipped. A set of more than
``ON_DISK_ABOVE`` images keeps its features and thumbnails in temporary row files (a
million 16 x 16 thumbnails are 512 MB), which every check reads a block at a time.

The thumbnail (mean removed, unit length) finds copies: a resized or re-encoded copy keeps
its thumbnail almost exactly, while a model's features are built to be alike for any two
images of one kind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from finessl.audit.neighbours import normalise
from finessl.audit.row_file import RowFile, part
from finessl.inference import PoolImages

ON_DISK_ABOVE = 100_000


@dataclass
class Scan:
    """Readable images of one set, in the order given. ``indices`` index the source dataset."""

    indices: np.ndarray  # [N] int64
    features: np.ndarray | RowFile  # [N, D] float16, unit rows
    digests: np.ndarray  # [N] S16: identical digests = identical decoded pixels
    thumbnails: np.ndarray | RowFile  # [N, THUMB * THUMB] float16, mean removed, unit rows
    sizes: np.ndarray  # [N, 2] int32 width, height
    failed: list[tuple[int, str]] = field(default_factory=list)  # (source index, reason)

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, keep: np.ndarray | slice) -> Scan:
        """The rows ``keep`` (views of these arrays, or of the row files, for a slice);
        ``failed`` is not carried."""
        def rows(values):
            return part(values, *keep.indices(len(values))[:2]) if isinstance(keep, slice) else values[keep]

        return Scan(self.indices[keep], rows(self.features), self.digests[keep],
                    rows(self.thumbnails), self.sizes[keep])


THUMB = 16


def thumbnail(image) -> np.ndarray:
    """The image as a 16 x 16 grey thumbnail, mean removed, unit length (zero if flat)."""
    small = np.asarray(image.convert("L").resize((THUMB, THUMB), Image.BILINEAR), np.float32).ravel()
    small -= small.mean()
    norm = np.linalg.norm(small)
    return small / norm if norm > 1e-6 else small


def pixel_digest(image) -> bytes:
    """A digest of the decoded pixels and their shape: re-saving a file does not change it."""
    pixels = np.ascontiguousarray(np.asarray(image))
    return hashlib.blake2b(pixels.tobytes() + str(pixels.shape).encode(), digest_size=16).digest()


class _Items(PoolImages):
    """``(tensor, position, digest, thumbnail, width, height, error)`` per image of ``source``."""

    def __getitem__(self, position: int):
        image, error = self.read(position)
        if error:
            return self.blank(), position, b"", torch.zeros(THUMB * THUMB), 0, 0, error
        if not isinstance(image, Image.Image):  # not an image (a user's vectors): no thumbnail
            return (self.transform(image), position, pixel_digest(image), torch.zeros(THUMB * THUMB),
                    0, 0, "")
        width, height = image.size
        return (self.transform(image), position, pixel_digest(image),
                torch.from_numpy(thumbnail(image)), width, height, "")


@torch.no_grad()
def scan(encode: Callable[[torch.Tensor], torch.Tensor], source: Dataset, indices: np.ndarray,
         transform, image_size: int, device: torch.device, batch_size: int = 128, workers: int = 0,
         progress: Callable[[int], None] | None = None, on_disk: bool | None = None) -> Scan:
    """Encodes ``source[indices]`` in batches; ``encode`` maps images to ``[B, D]`` features.
    ``on_disk``: features and thumbnails in row files (default: above ``ON_DISK_ABOVE``)."""
    loader = DataLoader(_Items(source, indices, transform, image_size), batch_size=batch_size,
                        num_workers=workers)
    indices = np.asarray(indices)
    total = len(indices)
    on_disk = total > ON_DISK_ABOVE if on_disk is None else on_disk
    # filled in place, row by row: no list of batches to concatenate (twice the memory)
    positions, digests = np.empty(total, np.int64), np.empty(total, "S16")
    sizes = np.empty((total, 2), np.int32)
    thumbs: np.ndarray | RowFile = RowFile(THUMB * THUMB, np.float16) if on_disk else \
        np.empty((total, THUMB * THUMB), np.float16)
    feats: np.ndarray | RowFile | None = None  # [N, D] once the first batch tells D
    failed, filled = [], 0
    for images, where, digest, thumb, width, height, errors in loader:
        ok = [i for i, e in enumerate(errors) if not e]
        failed += [(int(indices[int(where[i])]), errors[i]) for i, e in enumerate(errors) if e]
        if ok:
            out = normalise(encode(images[ok].to(device)).float().cpu().numpy())
            if feats is None:
                feats = RowFile(out.shape[1], np.float16) if on_disk else \
                    np.empty((total, out.shape[1]), np.float16)
            rows = slice(filled, filled + len(ok))
            _put(feats, rows, out)
            positions[rows] = where[ok].numpy()
            digests[rows] = [digest[i] for i in ok]
            _put(thumbs, rows, thumb[ok].numpy())
            sizes[rows] = np.stack([width[ok].numpy(), height[ok].numpy()], axis=1)
            filled += len(ok)
        if progress is not None:
            progress(len(errors))
    if feats is None:
        feats = RowFile(1, np.float16) if on_disk else np.zeros((0, 1), np.float16)
    if on_disk:
        feats.flush()
        thumbs.flush()
    else:
        feats, thumbs = feats[:filled], thumbs[:filled]
    return Scan(indices[positions[:filled]].astype(np.int64), feats, digests[:filled],
                thumbs, sizes[:filled], failed)


def _put(into: np.ndarray | RowFile, rows: slice, values: np.ndarray) -> None:
    if isinstance(into, RowFile):
        into.append(values)  # the rows come in order
    else:
        into[rows] = values
