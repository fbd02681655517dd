"""The one table of priors: name -> (config dataclass, constructor(config, sampler_config, device))."""

from ..core.registry import Component, Registry
from .diffusers.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior
from .toyworld.prior import ToyworldConfig, ToyworldPrior
from .toyworld.video import ToyworldVideoConfig, ToyworldVideoPrior
from .diffusers.video import VideoDiffusionConfig, VideoDiffusionPrior

PRIORS = Registry(
    "prior",
    {
        "sd": Component(StableDiffusionConfig, StableDiffusionPrior),
        "toyworld": Component(ToyworldConfig, ToyworldPrior),
        "toyworld-video": Component(ToyworldVideoConfig, ToyworldVideoPrior),
        "video-sd": Component(VideoDiffusionConfig, VideoDiffusionPrior),
    },
)
