"""The one table of priors: name -> (config dataclass, constructor(config, sampler_config, device))."""

from ..registry import Component, Registry
from .stable_diffusion import StableDiffusionConfig, StableDiffusionPrior
from .toyworld import ToyworldConfig, ToyworldPrior
from .toyworld_video import ToyworldVideoConfig, ToyworldVideoPrior
from .video_diffusers import VideoDiffusionConfig, VideoDiffusionPrior

PRIORS = Registry(
    "prior",
    {
        "sd": Component(StableDiffusionConfig, StableDiffusionPrior),
        "toyworld": Component(ToyworldConfig, ToyworldPrior),
        "toyworld-video": Component(ToyworldVideoConfig, ToyworldVideoPrior),
        "video-sd": Component(VideoDiffusionConfig, VideoDiffusionPrior),
    },
)
