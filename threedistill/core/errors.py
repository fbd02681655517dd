"""User-facing errors and warnings, each one line on stderr.

- `UserError`: bad input, found before any work; the CLI exits with code 2.
- `RunStopped`: a fault stopped work that had started (out of memory, a full disk, a run whose
  loss stays non-finite); what was saved before it stays, and the CLI exits with code 3.
- `warn`: a one-line warning for a fault the work survives (a cache that could not be written).
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""Write failures that mean "no room": no space left, quota exceeded, file too large."""


class UserError(Exception):
    """Bad input from the user (unknown name, malformed file, missing weights...).

    The message must name the problem and the fix in one line.
    """


class RunStopped(Exception):
    """A fault stopped a run or a command after it started; the message names the cause, what
    was kept and how to continue, in one line."""


class DiskFull(RunStopped):
    """A write failed for lack of space (ENOSPC, EDQUOT, EFBIG); names the file it was writing."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        super().__init__(f"could not write '{path}': {reason}; the files written before it are intact; free some disk space")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full(exc: OSError, path: str | Path) -> DiskFull:
    """The DiskFull error of a failed write of `path`."""
    return DiskFull(path, exc.strerror or str(exc))


def unknown_name(kind: str, name: str, valid: "list[str] | tuple[str, ...]") -> UserError:
    """Error for an unknown component name, listing the valid ones."""
    return UserError(f"unknown {kind} '{name}'; valid {kind} names: {', '.join(sorted(valid))}")


def printable(text: str) -> str:
    """`text` on one terminal line: control and format characters (newlines, escape sequences,
    bidirectional overrides) from user input become visible escapes such as \\n or \\u202e."""
    def shown(ch: str) -> str:
        if ch.isprintable() or ch == " ":
            return ch
        return repr(ch)[1:-1] if ord(ch) < 0x10000 and repr(ch)[1] == "\\" else f"\\u{ord(ch):04x}"
    return "".join(shown(ch) for ch in text)


def shown(value: object) -> str:
    """User-given text (a path, a prompt) as rich prints it literally, on one line."""
    from rich.markup import escape

    return escape(printable(str(value)))


_warned: set[str] = set()


def warn(message: str, once_per: str = "") -> None:
    """Print `warning: message` on stderr; with `once_per`, only the first warning of that key in
    this process (e.g. one per cache folder, however many of its files fail)."""
    if once_per:
        if once_per in _warned:
            return
        _warned.add(once_per)
    print(f"warning: {printable(message)}", file=sys.stderr)
