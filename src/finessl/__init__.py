"""finessl: semi-supervised fine-tuning of foundation models (FineSSL and baselines).

Python API (imports are lazy so ``import finessl`` and ``finessl --help`` stay fast)::

    import finessl
    final = finessl.train("smoke", "runs/smoke")        # preset, YAML path, dict or Config
    run = finessl.load("runs/smoke")
    run.predict(["cat.png"])
    finessl.evaluate("runs/smoke")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"

_API = {
    "train": "finessl.run",
    "load": "finessl.inference",
    "evaluate": "finessl.run",
    "Config": "finessl.config",
    "load_preset": "finessl.config",
    "load_config": "finessl.config",
    "SourceData": "finessl.data.datasets",
    "Transforms": "finessl.data.augment",
    "FinesslError": "finessl.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'finessl' has no attribute {name!r}")
