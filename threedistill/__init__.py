"""threedistill: text-to-3D/4D by score distillation, with a built-in ground-truth prior.

The Python API (threedistill/api.py) is exported here and imported on first use, so
`threedistill --help` stays fast:

    import threedistill as td
    run = td.run(prompt="a red mug", prior="toyworld")
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import Run, load, resume, run, run_plan
    from .batching.cluster import BatchOptions
    from .batching.submit import batch
    from .batching.tune import TuneOptions
    from .core.cameras import Cameras, heldout_cameras, orbit_cameras, turntable_cameras
    from .core.errors import UserError
    from .core.types import RenderOutput
    from .engine.callbacks import LoopCallback
    from .viewer.options import ViewerOptions

_EXPORTS = {
    "Run": "api", "run": "api", "run_plan": "api", "resume": "api", "load": "api",
    "Cameras": "core.cameras", "orbit_cameras": "core.cameras", "turntable_cameras": "core.cameras",
    "heldout_cameras": "core.cameras", "UserError": "core.errors", "RenderOutput": "core.types",
    "LoopCallback": "engine.callbacks", "ViewerOptions": "viewer.options",
    "batch": "batching.submit", "BatchOptions": "batching.cluster", "TuneOptions": "batching.tune",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'threedistill' has no attribute '{name}'")
