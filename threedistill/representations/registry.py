"""The one table of representations: name -> (config dataclass, Representation class)."""

from ..core.registry import Component, Registry
from .gaussians import Gaussians, GaussiansConfig
from .mesh import Mesh, MeshConfig
from .nerf import NeRF, NeRFConfig

REPRESENTATIONS = Registry(
    "representation",
    {"gaussians": Component(GaussiansConfig, Gaussians), "nerf": Component(NeRFConfig, NeRF), "mesh": Component(MeshConfig, Mesh)},
)
