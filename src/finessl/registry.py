"""A tiny name -> factory registry, so choices are data, not if-chains."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from finessl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; unknown names raise a ConfigError listing the choices.

    A registered class gets its key as ``cls.name``: the registry is the one place a
    method's name is written."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            if isinstance(obj, type):
                obj.name = name
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(unknown_name_message(self.kind, name, list(self._items)))
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)


def unknown_name_message(kind: str, name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(sorted(choices)[:30]) + (" ..." if len(choices) > 30 else "")
    return f"unknown {kind} {name!r}.{hint} Choices: {shown}"
