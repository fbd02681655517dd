"""Optional dependencies: a feature that needs one imports it through `require`, which names the
pip extra that installs it (pyproject.toml [project.optional-dependencies]) in a one-line error."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import UserError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module`, or fail with the one line that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise UserError(f"{feature} needs the optional package '{top}', which is not installed; "
                        f"install it with: pip install 'threedistill[{extra}]'") from None
