"""Scenes to edit: loading posed images (transforms.json), their views, and the objectives that
fit and edit them. Importing the package registers photometric, scene-dds and in2n in
`core.objective.OBJECTIVES`."""

from . import objectives  # noqa: F401  (registers the scene objectives)
