"""The one table of objectives: name -> (config dataclass, implementation)."""

from __future__ import annotations

from typing import NamedTuple

from ..errors import unknown_name
from .base import BaseGuidanceConfig, Guidance
from .sds import SDSConfig, SDSGuidance


class GuidanceEntry(NamedTuple):
    config: type[BaseGuidanceConfig]
    cls: type[Guidance]


GUIDANCES: dict[str, GuidanceEntry] = {
    "sds": GuidanceEntry(SDSConfig, SDSGuidance),
}


def guidance_entry(name: str) -> GuidanceEntry:
    """Look up an objective by name (UserError listing the valid names)."""
    if name not in GUIDANCES:
        raise unknown_name("guidance", name, list(GUIDANCES))
    return GUIDANCES[name]
