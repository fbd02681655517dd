"""Settings of the web viewer (`--viewer`, `--viewer.host`, `--viewer.port`, `--viewer.update-every`,
`--viewer.mesh-resolution`, `--viewer.budget`);
a session setting, not part of a run's config: resuming a run does not serve it again unless asked."""

from __future__ import annotations

from dataclasses import dataclass

LOOPBACK = "127.0.0.1"


@dataclass
class ViewerOptions:
    """Where the viewer listens and how often a live run's asset is sent to it."""

    host: str = LOOPBACK
    """The address to bind: loopback by default; any other address serves the run to the network (warned)."""
    port: int = 8080
    """The TCP port (0: any free port)."""
    update_every: int = 10
    """Send the asset, the training views and their x0 previews every N steps."""
    mesh_resolution: int = 48
    """Marching-cubes grid of the live mesh of NeRF runs (the finished mesh uses the run's mesh.resolution)."""
    budget: float = 0.03
    """Largest share of the loop's wall time the asset and image updates may take (updates are skipped beyond it)."""

    def check(self) -> None:
        from ..core.errors import UserError

        if not 0 <= self.port <= 65535:
            raise UserError(f"--viewer.port must be in 0..65535, got {self.port}")
        if self.update_every < 1:
            raise UserError(f"--viewer.update-every must be >= 1, got {self.update_every}")
        if not 0.0 < self.budget <= 1.0:
            raise UserError(f"--viewer.budget must be in (0, 1], got {self.budget}")
        if self.mesh_resolution < 8:
            raise UserError(f"--viewer.mesh-resolution must be >= 8, got {self.mesh_resolution}")
