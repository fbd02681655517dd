"""The one table of priors: name -> (config dataclass, constructor)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ..errors import unknown_name
from .toyworld import ToyworldConfig, ToyworldPrior


class PriorEntry(NamedTuple):
    config: type
    build: Callable[..., Any]
    """build(config, sampler_config, device) -> DiffusionPrior"""


PRIORS: dict[str, PriorEntry] = {
    "toyworld": PriorEntry(ToyworldConfig, ToyworldPrior),
}


def prior_entry(name: str) -> PriorEntry:
    """Look up a prior by name (UserError listing the valid names)."""
    if name not in PRIORS:
        raise unknown_name("prior", name, list(PRIORS))
    return PRIORS[name]
