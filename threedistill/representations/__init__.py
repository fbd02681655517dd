"""3D representations behind one contract (base.Representation): each renders Cameras to a
RenderOutput, owns its parameter groups and names its loss terms. Importing the package
registers gaussians, nerf and mesh in `base.REPRESENTATIONS`; `deformation.Deformed` wraps
one over time (4D) and `particles.Particles` holds several."""

from . import gaussians, mesh, nerf  # noqa: F401  (registers the representations)
