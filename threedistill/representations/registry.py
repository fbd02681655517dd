"""The one table of representations: name -> (config dataclass, Representation class)."""

from ..registry import Component, Registry
from .gaussians import Gaussians, GaussiansConfig
from .nerf import NeRF, NeRFConfig

REPRESENTATIONS = Registry(
    "representation",
    {"gaussians": Component(GaussiansConfig, Gaussians), "nerf": Component(NeRFConfig, NeRF)},
)
