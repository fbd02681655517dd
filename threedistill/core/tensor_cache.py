"""On-disk caches of tensors (toyworld references and clips, text embeddings), checked on every read.

A cache file holds tensors, strings and a content digest (blake2b over every tensor's bytes),
written atomically and read with `torch.load(weights_only=True)`. A file that does not load,
whose digest, metadata or shapes do not match, is corrupt: a one-line warning names it and the
caller rebuilds it, so a damaged cache is never used silently. A cache that cannot be written
(a full disk, a read-only folder) costs a one-line warning per folder; the work goes on
without it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from .atomic import atomic_path
from .errors import DiskFull, warn

CACHE_FORMAT = "threedistill-tensor-cache-1"

Check = Callable[[dict[str, Tensor]], Optional[str]]
"""Returns what is wrong with loaded tensors (e.g. a shape), or None."""


def shape_problem(tensors: dict[str, Tensor], shapes: dict[str, tuple[int, ...]]) -> Optional[str]:
    """What is wrong with loaded tensors against the expected {name: shape}: a missing name, a shape, a
    non-finite value; None when nothing is (a `Check`'s common part)."""
    for name, shape in shapes.items():
        t = tensors.get(name)
        if t is None:
            return f"no '{name}'"
        if tuple(t.shape) != shape:
            return f"'{name}' has shape {list(t.shape)}, expected {list(shape)}"
        if not torch.isfinite(t).all():
            return f"'{name}' holds non-finite values"
    return None


def digest(tensors: dict[str, Tensor]) -> str:
    """blake2b over the names, dtypes, shapes and bytes of `tensors`."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class TensorCache:
    """One cache folder; `what` names it in warnings ('toyworld reference cache')."""

    def __init__(self, folder: str | Path, what: str) -> None:
        self.folder = Path(folder)
        self.what = what

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def load(self, key: str, meta: dict[str, str], check: Optional[Check] = None) -> Optional[dict[str, Tensor]]:
        """The tensors stored under `key`, or None when absent or corrupt (warned; rebuild them)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to read the file means a damaged file
            return self._corrupt(path, f"unreadable: {type(exc).__name__}")
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            return None  # an older layout: rebuilt and rewritten without a warning
        tensors, stored = data.get("tensors"), data.get("meta")
        if not isinstance(tensors, dict) or not all(isinstance(t, Tensor) for t in tensors.values()):
            return self._corrupt(path, "no tensors")
        if stored != meta:
            return self._corrupt(path, "it belongs to other inputs")
        if data.get("digest") != digest(tensors):
            return self._corrupt(path, "content digest mismatch")
        problem = check(tensors) if check is not None else None
        if problem:
            return self._corrupt(path, problem)
        return tensors

    def save(self, key: str, meta: dict[str, str], tensors: dict[str, Tensor]) -> None:
        """Store `tensors` under `key`; a failure to write is a warning, never fatal."""
        path = self.path(key)
        tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        record = {"format": CACHE_FORMAT, "meta": meta, "tensors": tensors, "digest": digest(tensors)}
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                torch.save(record, f)
        except DiskFull as exc:
            warn(f"{self.what}: {exc}; continuing without caching", once_per=f"write {self.folder}")
        except OSError as exc:
            warn(f"{self.what}: cannot write '{path}' ({exc.strerror or exc}); continuing without caching",
                 once_per=f"write {self.folder}")

    def _corrupt(self, path: Path, why: str) -> Optional[dict[str, Tensor]]:
        warn(f"{self.what} file '{path}' is corrupt ({why}); rebuilding it")
        return None
