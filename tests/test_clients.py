"""Exports checked by the tools people open them in (tests/clients, installed by `npm ci`):
the Khronos glTF validator reports no errors for mesh.glb of a Gaussian, a NeRF, a mesh and a 4D run;
Spark, a three.js Gaussian-splat renderer, loads splats.ply in headless chromium with every Gaussian."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from support import NODE_PROJECT, browser_page, require_client
from threedistill.export.splat_ply import read_splat_ply


def _node_clients() -> None:
    require_client(shutil.which("node") is not None and (NODE_PROJECT / "node_modules" / "gltf-validator").is_dir(),
                   "node and tests/clients/node_modules (npm ci in tests/clients)")


@pytest.mark.parametrize("kind", ["gaussians", "nerf", "mesh", "4d"])
def test_gltf_validator_finds_no_errors(kind: str, finished_run: Path, made_run) -> None:
    _node_clients()
    glb = (finished_run if kind == "gaussians" else made_run(kind)) / "export" / "mesh.glb"
    proc = subprocess.run(["node", str(NODE_PROJECT / "validate_gltf.mjs"), str(glb)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    errors = [m for m in report["issues"]["messages"] if m["severity"] == 0]
    assert report["issues"]["numErrors"] == 0, errors
    assert report["info"]["drawCallCount"] >= 1 and report["info"]["totalTriangleCount"] > 0


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.browser
def test_spark_loads_every_gaussian_of_splats_ply(finished_run: Path, tmp_path: Path) -> None:
    require_client((NODE_PROJECT / "node_modules" / "@sparkjsdev" / "spark").is_dir(), "tests/clients/node_modules (npm ci)")
    ply = finished_run / "export" / "splats.ply"
    ours = read_splat_ply(ply)
    (tmp_path / "node_modules").symlink_to(NODE_PROJECT / "node_modules")
    shutil.copy(NODE_PROJECT / "spark.html", tmp_path / "spark.html")
    shutil.copy(ply, tmp_path / "splats.ply")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with browser_page(256, 256) as page:
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/spark.html?ply=splats.ply")
            page.wait_for_function("window.sparkResult !== undefined", timeout=120000)
            result = page.evaluate("window.sparkResult")
            shot = iio.imread(page.screenshot(), extension=".png")[..., :3]
    finally:
        server.shutdown()
    assert "error" not in result, result["error"] if "error" in result else ""
    assert result["count"] == len(ours["means"]) == 300, "every Gaussian"
    np.testing.assert_allclose(result["mean"], ours["means"].mean(0).numpy(), atol=2e-3)
    assert abs(result["meanOpacity"] - float(torch.sigmoid(ours["opacity_logits"]).mean())) < 0.01
    assert (shot.min(axis=-1) < 200).sum() > 200, "Spark draws the splats"
