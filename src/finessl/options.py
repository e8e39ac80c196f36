"""Each method's settings, declared beside the method.

A PEFT method or an algorithm with settings of its own declares them in its file as a
dataclass of ``opt(...)`` fields and registers it::

    @method_options("model", "lora", aliases={"lora_rank": "rank"})
    @dataclass
    class LoraOptions:
        rank: int = opt(8, "LoRA rank r", ge=1)

The configuration then has a ``model.lora`` section (``--model.lora.rank 16``; the old flat
key ``model.lora_rank`` still works), validated when the configuration loads and printed by
``finessl config``. The registry is filled when the method packages are imported;
``discover`` imports them (``METHOD_PACKAGES``), so reading a configuration finds every
method's settings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

METHOD_PACKAGES = ("finessl.models.peft", "finessl.algorithms")


@dataclass(frozen=True)
class MethodOptions:
    section: str  # "model" or "algorithm"
    method: str  # the section key: "lora", "softmatch", ...
    cls: type
    aliases: dict[str, str]  # old flat key -> field of cls
    used_by: tuple[str, ...]  # method names (model.peft / algorithm.name) that read it


_REGISTRY: dict[tuple[str, str], MethodOptions] = {}


def method_options(section: str, method: str, aliases: dict[str, str] | None = None,
                   used_by: tuple[str, ...] | None = None) -> Callable[[type], type]:
    def register(cls: type) -> type:
        key = (section, method)
        if key in _REGISTRY and _REGISTRY[key].cls is not cls:
            raise ValueError(f"options {section}.{method} registered twice")
        _REGISTRY[key] = MethodOptions(section, method, cls, dict(aliases or {}),
                                       used_by or (method,))
        return cls

    return register


def discover() -> None:
    """Imports the method packages, whose modules register their options."""
    for package in METHOD_PACKAGES:
        importlib.import_module(package)


def options_of(section: str) -> dict[str, MethodOptions]:
    discover()
    return {method: entry for (sec, method), entry in _REGISTRY.items() if sec == section}
