"""The one rule for choosing a render backend (splats and volumes alike).

"torch" always works; "cuda" needs tensors on a CUDA device and the library's kernels;
"auto" takes the kernels when both hold, else torch (warning once per library).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from threedistill.core.errors import UserError, unknown_name

BACKENDS = ("auto", "cuda", "torch")
_log = logging.getLogger(__name__)
_warned: set[str] = set()


def resolve_backend(name: str, device: torch.device | str, status: Callable[[], tuple[bool, str]], library: str, what: str) -> str:
    """The concrete backend ("cuda" or "torch") that `name` selects for tensors on `device`.

    `status()` says whether `library`'s CUDA kernels load; `what` names the job in the warning.
    """
    if name not in BACKENDS:
        raise unknown_name("render backend", name, BACKENDS)
    if name == "torch":
        return "torch"
    on_cuda = torch.device(device).type == "cuda"
    if name == "cuda":
        if not on_cuda:
            raise UserError(f"render backend 'cuda' needs tensors on a CUDA device, got {device}; use --render.backend torch")
        ok, reason = status()
        if not ok:
            raise UserError(f"render backend 'cuda' is unavailable ({reason}); use --render.backend torch or auto")
        return "cuda"
    if not on_cuda:
        return "torch"
    ok, reason = status()
    if not ok and library not in _warned:
        _log.warning("%s unavailable (%s); %s with the torch backend", library, reason, what)
        _warned.add(library)
    return "cuda" if ok else "torch"
