"""Frozen diffusion priors behind one contract (`base.DiffusionPrior`, `base.Prior`).

Importing the package registers the built-in priors in `base.PRIORS`: toyworld/ (the exact
ground-truth priors) and diffusers/ (Stable Diffusion and text-to-video through diffusers).
"""

from .diffusers import stable_diffusion, video  # noqa: F401  (registers sd, video-sd)
from .toyworld import prior, video as toyworld_video  # noqa: F401  (registers toyworld, toyworld-video)
