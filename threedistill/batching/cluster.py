"""Joining or starting Ray for a batch, and the resources each run asks for.

`--ray-address auto|HOST:PORT` joins a running cluster (`ray start --head` on one node,
`ray start --address HEAD:6379` on the others), as does the driver of a `ray job submit` (Ray sets
RAY_ADDRESS for it); without either a local Ray starts for the batch and
stops after it, its dashboard (when Ray's [default] extra is there) bound to 127.0.0.1. A
session that already called `ray.init` (a notebook, the tests) is used as it is.

Token authentication (Ray 2.60): a local `ray.init()` that starts a new cluster turns it on by
default and writes ~/.ray/auth_token; `ray start --head` turns it on when a token exists
(`ray get-auth-token --generate`) or with RAY_AUTH_MODE=token. RAY_AUTH_MODE=disabled turns it off
(CI and the tests do, tests/conftest.py); joining with `--ray-address HOST:PORT` needs the
cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Iterator, Optional

from ..core.errors import UserError
from ..core.extras import require


@dataclass
class BatchOptions:
    """How a batch runs on Ray (the command's --gpus-per-run, --cpus-per-run, --ray-address, ...)."""

    gpus_per_run: Optional[float] = None
    """GPUs per run (default: 1 when the cluster has GPUs, else 0: runs on CPUs)."""
    cpus_per_run: float = 1.0
    """CPUs per run; also the run's torch threads."""
    ray_address: Optional[str] = None
    """'auto' or HOST:PORT of a running cluster; None starts a local Ray for the batch."""
    ray_cpus: Optional[int] = None
    """CPUs of a local Ray (default: all of this machine's)."""
    max_retries: int = 3
    """Times a run's task is retried after its worker died or was preempted (each retry resumes)."""
    dashboard: bool = True
    """Start a local Ray's dashboard (on 127.0.0.1) when Ray's [default] extra is installed."""
    progress: bool = True

    def check(self) -> None:
        if self.gpus_per_run is not None and self.gpus_per_run < 0:
            raise UserError(f"--gpus-per-run must be >= 0, got {self.gpus_per_run}")
        if self.cpus_per_run <= 0:
            raise UserError(f"--cpus-per-run must be > 0, got {self.cpus_per_run}")
        if self.max_retries < 0:
            raise UserError(f"--max-retries must be >= 0, got {self.max_retries}")
        if self.ray_cpus is not None and self.ray_cpus < 1:
            raise UserError(f"--ray-cpus must be >= 1, got {self.ray_cpus}")
        if self.ray_address is not None and self.ray_cpus is not None:
            raise UserError("--ray-cpus sizes a local Ray; a cluster joined with --ray-address has its own CPUs")


def ray_module() -> ModuleType:
    """`ray`, or the one-line error naming the extra that installs it."""
    return require("ray", "ray", "threedistill batch")


def connect(options: BatchOptions) -> bool:
    """Join the cluster at `options.ray_address` or start a local Ray (see the module docstring);
    True when this call started or joined Ray (then the batch shuts it down), False when the
    session was already connected."""
    ray = ray_module()
    if ray.is_initialized():
        return False
    address = options.ray_address or os.environ.get("RAY_ADDRESS")  # set for the driver of a `ray job submit`
    if address and options.ray_cpus is not None:
        raise UserError(f"--ray-cpus sizes a local Ray, and this batch joins the cluster at {address} (RAY_ADDRESS); drop --ray-cpus")
    if address and address != "auto":
        _check_reachable(address)
    try:
        with keeping_sigterm_handler():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=options.ray_cpus, include_dashboard=None if options.dashboard else False,
                         dashboard_host="127.0.0.1", log_to_driver=False)
    except ConnectionError as exc:
        where = address or "a local Ray"
        raise UserError(f"cannot reach the Ray cluster at {where} ({str(exc).splitlines()[0][:160]}); start it with "
                        "`ray start --head` or leave out --ray-address for a local Ray") from None
    return True


@contextlib.contextmanager
def keeping_sigterm_handler() -> Iterator[None]:
    """`ray.init` replaces the process's SIGTERM handler with `sys.exit` and leaves it after
    `ray.shutdown`; put back the one before it (the CLI's, core/interrupts.py, so SIGTERM stops a
    batch as Ctrl-C does; the default elsewhere, so processes forked later die on SIGTERM)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT that refuses connections is one line now (Ray itself would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address must be auto or HOST:PORT, got '{address}'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with `ray start --head` "
                        "or leave out --ray-address for a local Ray") from None


def resources(options: BatchOptions) -> tuple[float, float]:
    """(CPUs, GPUs) each run's task asks for, checked against what the cluster has."""
    ray = ray_module()
    total = ray.cluster_resources()
    gpus = options.gpus_per_run if options.gpus_per_run is not None else (1.0 if total.get("GPU", 0) > 0 else 0.0)
    for name, want in (("GPU", gpus), ("CPU", options.cpus_per_run)):
        if want > total.get(name, 0):
            raise UserError(f"each run asks for {want:g} {name}(s) but the Ray cluster has {total.get(name, 0):g}; lower "
                            f"--{name.lower()}s-per-run or add nodes")
    return options.cpus_per_run, gpus
