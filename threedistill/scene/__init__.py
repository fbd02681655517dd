"""Scenes to edit: loading posed images (transforms.json), their views, and the objectives that
fit and edit them. Importing the package registers photometric, scene-dds and in2n, and the
latent editing stages latent-fit, latent-dds and latent-distill, in `core.objective.OBJECTIVES`."""

from . import latent, objectives  # noqa: F401  (registers the scene objectives)
