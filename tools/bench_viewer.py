"""What the live viewer costs the training loop: the same run with the viewer off and on, in one process.

    python tools/bench_viewer.py [--steps 300] [--repeats 3] [--update-every 10] [--client websocket|none] [-- RUN FLAGS...]

Each repeat trains the same toyworld run (the README's main job by default, shortened to --steps)
once without the viewer and once with it (the order alternates between repeats), and times the
loop's wall clock from the stage's start to its last step with a loop callback, so everything the
viewer does between steps is counted. With `--client websocket` (the default) a client connected to
the viewer's websocket receives every message, as a browser would (without a browser's own CPU use,
which on the same machine would compete with the run). Prints ms per step off and on and the
ratio. Take the numbers on a quiet machine: other work on the cores changes both.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from rich.console import Console

import threedistill as td
from threedistill.engine.plan import parse_run_plan


class LoopClock(td.LoopCallback):
    """Wall time from the stage's start to its last step."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.steps = 0

    def on_stage_start(self, trainer: Any) -> None:
        self.start = time.perf_counter()
        self.first_step = trainer.step

    def on_step(self, trainer: Any, logs: dict[str, float]) -> None:
        self.end = time.perf_counter()
        self.steps = trainer.step - self.first_step

    @property
    def ms_per_step(self) -> float:
        return 1000.0 * (self.end - self.start) / max(self.steps, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DrainingClient:
    """A websocket client of the viewer that reads every message until the server goes away."""

    def __init__(self, port: int) -> None:
        self.messages = 0
        self.bytes = 0
        self._thread = threading.Thread(target=self._run, args=(port,), daemon=True)
        self._thread.start()

    def _run(self, port: int) -> None:
        import viser
        from websockets.sync.client import connect

        for _ in range(600):
            try:
                with connect(f"ws://127.0.0.1:{port}", subprotocols=[f"viser-v{viser.__version__}"], max_size=None) as ws:  # type: ignore[list-item]
                    while True:
                        data = ws.recv()
                        self.messages += 1
                        self.bytes += len(data)
            except OSError:
                time.sleep(0.1)
            except Exception:  # the server closed the connection: the run ended
                return


def one_run(flags: list[str], out: Path, viewer: Optional[td.ViewerOptions], client: str) -> tuple[float, Optional[DrainingClient]]:
    clock = LoopClock()
    drain = DrainingClient(viewer.port) if viewer is not None and client == "websocket" else None
    td.run_plan(parse_run_plan([*flags, "--out", str(out)]), viewer=viewer or False, callbacks=[clock], console=Console(quiet=True))
    return clock.ms_per_step, drain


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--update-every", type=int, default=10)
    p.add_argument("--client", choices=["websocket", "none"], default="websocket")
    p.add_argument("run_flags", nargs="*", help="more `threedistill run` flags (after --)")
    args = p.parse_args()
    flags = ["--prior", "toyworld", "--prompt", "a red mug", "--steps", str(args.steps), "--log.no-progress",
             "--log.export-formats", "splat", "--log.eval-views", "4", *args.run_flags]
    times: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as work:
        one_run([*flags, "--steps", "2"], Path(work) / "warm-up", None, "none")  # references cached, imports done
        for repeat in range(args.repeats):
            for mode in (("off", "on") if repeat % 2 == 0 else ("on", "off")):
                options = td.ViewerOptions(port=free_port(), update_every=args.update_every) if mode == "on" else None
                ms, drain = one_run(flags, Path(work) / f"{mode}-{repeat}", options, args.client)
                times[mode].append(ms)
                sent = f"; client received {drain.messages} messages, {drain.bytes / 1e6:.1f} MB" if drain else ""
                print(f"repeat {repeat + 1} viewer {mode:>3}: {ms:7.2f} ms/step{sent}", flush=True)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print(f"\nmedian over {args.repeats} repeats, {args.steps} steps, update every {args.update_every}, client {args.client}:")
    print("| viewer | ms / step |\n|---|---|")
    print(f"| off | {off:.2f} |\n| on | {on:.2f} |")
    print(f"ratio on/off: {on / off:.3f} ({100 * (on / off - 1):+.1f} %)")
    print("(take this on a quiet machine: other work on the cores changes both numbers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
