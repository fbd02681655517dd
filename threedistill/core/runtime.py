"""Small process-wide helpers: where caches live, the C allocator's settings, and silencing chatty
libraries for a while."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Callable, Iterator, TypeVar


def default_cache_dir() -> str:
    """Root of threedistill's caches (THREEDISTILL_CACHE overrides ~/.cache/threedistill)."""
    return os.environ.get("THREEDISTILL_CACHE", str(Path.home() / ".cache" / "threedistill"))


T = TypeVar("T")

MMAP_THRESHOLD = 256 << 20
"""Blocks glibc's malloc serves from fresh pages (mmap) instead of its heap: bytes and up."""
_allocator_tuned = False


def tune_allocator() -> bool:
    """Keep freed tensor memory in the process (glibc only; idempotent). Returns whether it applied.

    By default glibc maps every block over 128 KB-32 MB straight from the OS and hands it back on
    free, and trims the heap top eagerly, so a loop that allocates and frees same-sized tensors
    page-faults on every new one: on a 2-core CPU the splat renderer spent about a third of a
    step in page faults. Raising the mmap and trim thresholds makes those blocks heap memory
    that is reused; the process keeps its peak footprint instead of returning it.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    _allocator_tuned = bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, 4 * MMAP_THRESHOLD))
    return _allocator_tuned


@contextlib.contextmanager
def quiet_libraries(*logger_names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise these loggers to `level` and ignore warnings inside the block, so a failure the
    caller turns into a one-line error is not preceded by the libraries' own chatter."""
    loggers = [logging.getLogger(name) for name in logger_names]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, old in zip(loggers, previous):
            logger.setLevel(old)


def load_quietly(load: Callable[[], T]) -> T:
    """Run a diffusers/transformers loader with their loggers configured, then silenced (a
    failure the loader turns into a one-line UserError is not preceded by their chatter)."""
    import importlib

    libraries = [importlib.import_module(name) for name in ("diffusers", "transformers")]  # importing configures their loggers
    for library in libraries:  # their loading progress bars too
        library.utils.logging.disable_progress_bar()
    try:  # their error logs too: a failure becomes one UserError line that quotes it
        with quiet_libraries("diffusers", "transformers", "huggingface_hub", level=logging.CRITICAL + 1):
            return load()
    finally:
        for library in libraries:
            library.utils.logging.enable_progress_bar()
