"""CLIP text side: zero-shot classification and text-initialised ("semantic") heads.

For an open_clip backbone, ``backbone.text`` is a ``ClipText``: it embeds prompts with the
CLIP text tower and maps image features into the joint space (ViTs: ``z @ proj``).

The semantic head uses ``W = T @ proj^T`` (T: normalised text embeddings, one row per
class), so ``<z, w_k> = <z proj, t_k>``: the head's logit times ``|w_k| / s`` is CLIP's
zero-shot logit up to a per-image factor. A cosine head also divides by ``|w_k|``, so its
predictions match zero-shot exactly only where the ``|w_k|`` are equal (close for real
CLIP models); ``tests/test_zeroshot.py`` checks both statements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from finessl.errors import ConfigError


class ClipText:
    """Text encoder and image-to-joint-space projection of one open_clip model."""

    def __init__(self, model, tokenizer, project: Callable[[torch.Tensor], torch.Tensor],
                 projection: torch.Tensor | None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.project = project
        self.projection = projection  # [num_features, embed] or None (features are embeddings)

    @torch.no_grad()
    def embed(self, classes: Sequence[str], template: str) -> torch.Tensor:
        """Normalised text embeddings ``[C, E]`` of ``template.format(class)``."""
        tokens = self.tokenizer([template.format(c.replace("_", " ")) for c in classes])
        device = self.model.logit_scale.device  # the text tower stays where it was built
        return F.normalize(self.model.encode_text(tokens.to(device)).float(), dim=-1)


def require_text(backbone) -> ClipText:
    text = getattr(backbone, "text", None)
    if text is None:
        raise ConfigError("text features need an open_clip (CLIP) backbone; "
                          "use model.head_init 'random' with this one")
    return text


def semantic_head_weights(backbone, classes: Sequence[str], template: str) -> torch.Tensor:
    """``T @ proj^T``: class rows in the backbone's feature space."""
    text = require_text(backbone)
    embeddings = text.embed(classes, template)
    if text.projection is None:
        return embeddings
    return embeddings @ text.projection.detach().float().t()


@torch.no_grad()
def zeroshot_logits(backbone, images: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """CLIP's zero-shot logits: ``100 * cos(image embedding, text embedding)``."""
    image = F.normalize(require_text(backbone).project(backbone(images)).float(), dim=-1)
    return 100.0 * image @ text_embeddings.t()
