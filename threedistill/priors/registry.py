"""The one table of priors: name -> (config dataclass, constructor(config, sampler_config, device))."""

from ..registry import Component, Registry
from .toyworld import ToyworldConfig, ToyworldPrior

PRIORS = Registry("prior", {"toyworld": Component(ToyworldConfig, ToyworldPrior)})
