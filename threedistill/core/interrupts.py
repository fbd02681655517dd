"""SIGINT (Ctrl-C) and SIGTERM (cluster preemption, `kill`): stop cleanly, say so in the exit code.

Outside a training step both raise `Interrupted` (a KeyboardInterrupt carrying the signal), so
whatever runs unwinds and the command ends with exit code 128 + signal (130 for SIGINT, 143
for SIGTERM). Inside the training loop `StopRequests.deferred()` turns the first signal into a
request the loop honours after the current step (then it checkpoints); a second one raises at
once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Any, Callable, Iterator, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; `exit_code` is 128 + its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code_of(exc: KeyboardInterrupt) -> int:
    """128 + the signal for an `Interrupted`, 130 (SIGINT) for a plain KeyboardInterrupt."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


@contextlib.contextmanager
def _handlers(handler: Callable[[int, Optional[FrameType]], Any]) -> Iterator[None]:
    """Install `handler` for the stop signals (only the main thread may)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in STOP_SIGNALS:
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _raise(signum: int, frame: Optional[FrameType]) -> None:
    raise Interrupted(signum)


def raising_on_signals() -> contextlib.AbstractContextManager[None]:
    """Within the block, SIGINT and SIGTERM raise `Interrupted`."""
    return _handlers(_raise)


class StopRequests:
    """The training loop's view of stop signals (see the module docstring), and of stops asked
    for by code (the viewer's Stop button, an API callback: `ask`)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.asked = False

    @property
    def requested(self) -> bool:
        return self.asked or self.signum is not None

    @property
    def reason(self) -> str:
        """The signal's name, or 'stop requested' for a stop asked for by code."""
        return signal_name(self.signum) if self.signum is not None else "stop requested"

    def ask(self) -> None:
        """Stop after the current step, as a first Ctrl-C does."""
        self.asked = True

    def _request(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is not None:  # the second signal: stop right now
            raise Interrupted(signum)
        self.signum = signum

    def deferred(self) -> contextlib.AbstractContextManager[None]:
        """Within the block, the first stop signal is recorded instead of raised."""
        return _handlers(self._request)
