"""The one table of objectives: name -> (config dataclass, Guidance class)."""

from ..registry import Component, Registry
from .sds import SDSConfig, SDSGuidance

GUIDANCES = Registry("guidance", {"sds": Component(SDSConfig, SDSGuidance)})
