"""The one table of representations: name -> (config dataclass, class)."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import unknown_name
from .gaussians import Gaussians, GaussiansConfig


class RepresentationEntry(NamedTuple):
    config: type
    cls: Any


REPRESENTATIONS: dict[str, RepresentationEntry] = {
    "gaussians": RepresentationEntry(GaussiansConfig, Gaussians),
}


def representation_entry(name: str) -> RepresentationEntry:
    """Look up a representation by name (UserError listing the valid names)."""
    if name not in REPRESENTATIONS:
        raise unknown_name("representation", name, list(REPRESENTATIONS))
    return REPRESENTATIONS[name]
