"""Small process-wide helpers: where caches live, and silencing chatty libraries for a while."""

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
