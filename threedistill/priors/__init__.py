"""Frozen diffusion priors behind one contract (`base.DiffusionPrior`, `base.Prior`).

Importing the package registers the built-in priors in `base.PRIORS`: toyworld/ (the exact
ground-truth priors) and diffusers/ (Stable Diffusion and text-to-video through diffusers), toyworld_sd/ (Stable
Diffusion on a small model trained on toyworld, scored against ground truth).
"""

from .diffusers import deepfloyd, mvdream, stable_diffusion, video, zero123  # noqa: F401  (registers sd, video-sd, mvdream, zero123, deepfloyd-if)
from .toyworld import prior, video as toyworld_video  # noqa: F401  (registers toyworld, toyworld-video)
from .toyworld_sd import prior as toyworld_sd  # noqa: F401  (registers toyworld-sd)
