"""Config fields and each method's settings, declared beside the method.

``opt(default, doc, ...)`` makes a documented, range-checked config field. A PEFT method or
an algorithm with settings of its own declares them in its file as a dataclass of
``opt(...)`` fields and registers it::

    @method_options("model", "lora", aliases={"lora_rank": "rank"})
    @dataclass
    class LoraOptions:
        rank: int = opt(8, "LoRA rank r", ge=1)

The configuration then has a ``model.lora`` section (``--model.lora.rank 16``; the old flat
key ``model.lora_rank`` still works), validated when the configuration loads and printed by
``finessl config``. The registry is filled when the method packages are imported;
``finessl.config`` imports them (its ``METHOD_PACKAGES``). This module imports nothing of
finessl, and the method modules import the config's classes for type checking only, so
reading a configuration imports the methods without the methods importing it back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def opt(default: Any, doc: str, *, choices: tuple | None = None, ge: float | None = None,
        gt: float | None = None, le: float | None = None, lt: float | None = None,
        length: int | None = None) -> Any:
    """A config field with its one-line documentation and the values it accepts.

    Checked by ``validate_config`` (and on every override); ``finessl config`` prints ``doc``.
    For a list, ``choices`` and the bounds apply to each item and ``length`` to the list.
    """
    meta = {"doc": doc, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt,
            "length": length}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# ``used_by`` of settings every method reads (FineSSL's parts plug into every algorithm).
EVERY_METHOD = ("*",)

@dataclass(frozen=True)
class MethodOptions:
    section: str  # "model", "data" or "algorithm"
    method: str  # the section key: "lora", "softmatch", ...
    cls: type
    aliases: dict[str, str]  # old flat key -> field of cls
    used_by: tuple[str, ...]  # method names (model.peft / algorithm.name) that read it, or EVERY_METHOD

    def used_with(self, names: set[str]) -> bool:
        return self.used_by == EVERY_METHOD or bool(set(self.used_by) & names)


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


def registered(section: str) -> dict[str, MethodOptions]:
    """The sections registered so far (``finessl.config.options_of`` imports every method
    package first)."""
    return {method: entry for (sec, method), entry in _REGISTRY.items() if sec == section}
