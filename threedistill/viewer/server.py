"""Starting the viser server: the [viewer] extra checked with a one-line error, loopback unless
asked otherwise (another host is warned about), the URL printed, our initial camera."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from rich.console import Console

from ..core.extras import require
from .options import LOOPBACK, ViewerOptions


def check_installed() -> Any:
    """The viser module, or the one-line error naming the [viewer] extra."""
    return require("viser", "viewer", "the viewer")


def start_server(options: ViewerOptions, console: Console, title: str) -> Any:
    """A running `viser.ViserServer` on options.host:options.port (the next free port if taken)."""
    options.check()
    viser = check_installed()
    if options.host != LOOPBACK:
        console.print(f"[yellow]warning:[/] the viewer listens on {options.host}, not only on this machine: anyone who can "
                      "reach that address can watch and stop the run")
    with contextlib.redirect_stdout(io.StringIO()):  # viser's banner: stdout is for our output
        server = viser.ViserServer(host=options.host, port=options.port, label=title, verbose=False)
    server.initial_camera.position = (4.2, 1.4, 2.0)
    server.initial_camera.look_at = (0.0, 0.0, 0.0)
    server.initial_camera.up = (0.0, 0.0, 1.0)
    console.print(f"viewer: {viewer_url(options.host, server.get_port())}")
    return server


def viewer_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}"


def stop_server(server: Any) -> None:
    """Stop it (viser's goodbye line kept off stdout: stop() joins the thread that prints it)."""
    with contextlib.redirect_stdout(io.StringIO()):
        server.stop()
