"""Atomic, durable file writes: write a temporary file beside the target, flush it to disk, rename.

A reader sees the old file or the new one, never a part: a process killed at any point (even by
SIGKILL) leaves the previous version intact, plus at most a temporary file
`.<stem>.<pid>.<random>.tmp<suffix>`, which `remove_stale_temporaries` deletes once its writer is
gone. A write that fails for lack of space (ENOSPC, EDQUOT, EFBIG) raises `DiskFull` naming
the target (core/errors.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import disk_full, is_disk_full

_TEMPORARY = re.compile(r"^\..*\.(\d+)\.[a-z0-9_]{8}\.tmp(\.[^.]*)?$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success flush it and rename it onto `path`.

    The temporary file keeps the target's suffix so libraries that pick a format from the
    extension (imageio, trimesh) still work. On error the temporary file is removed and the
    target is left untouched; a full disk is a `DiskFull` naming the target.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_beside(target)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(exc, target) from None
        raise
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, target)
        _fsync_folder(target.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(exc, target) from None
        raise
    finally:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()


def temporary_beside(target: Path) -> Path:
    """A new empty file `.<stem>.<pid>.<random>.tmp<suffix>` in the target's folder."""
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.{os.getpid()}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    return Path(name)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append to a log-like file (not atomic: a line is added or not); a full disk is a DiskFull."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(exc, Path(path)) from None
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files in `folder` whose writing process is gone (killed mid-write)."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and not _alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync(path: Path) -> None:
    """Flush a written file's data to the disk before it replaces the target."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if is_disk_full(exc):
            raise
        # EINVAL: a file system (or device) without fsync; nothing more to do
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: some file systems refuse fsync on a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
