"""Every built-in component: importing this module runs their registration decorators, so the
tables (`PRIORS`, `OBJECTIVES`, `REPRESENTATIONS`) hold them all (docs/architecture.md)."""

from . import explicit4d, guidance, priors, representations, scene  # noqa: F401
