"""The one table of priors: name -> (config dataclass, constructor(config, sampler_config, device))."""

from ..registry import Component, Registry
from .stable_diffusion import StableDiffusionConfig, StableDiffusionPrior
from .toyworld import ToyworldConfig, ToyworldPrior

PRIORS = Registry(
    "prior",
    {
        "sd": Component(StableDiffusionConfig, StableDiffusionPrior),
        "toyworld": Component(ToyworldConfig, ToyworldPrior),
    },
)
