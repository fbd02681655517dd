"""Name -> component tables (priors, objectives, representations) with helpful misses."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from .errors import unknown_name


class Component(NamedTuple):
    """A selectable component: its config dataclass and what builds it."""

    config: type
    build: Callable[..., Any]


class Registry(dict):
    """A dict whose missing keys raise a UserError listing the valid names."""

    def __init__(self, kind: str, entries: dict[str, Component]) -> None:
        super().__init__(entries)
        self.kind = kind

    def __missing__(self, name: str) -> Component:
        raise unknown_name(self.kind, name, list(self))
