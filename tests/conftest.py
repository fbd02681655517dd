"""Shared test set-up: a per-session reference cache and the `cuda` marker."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch


def _share_cores_between_workers() -> None:
    """Under pytest-xdist (`-n N`), each worker's torch (and each process a test starts) gets cores / N threads:
    N workers with torch's default of one thread per core would oversubscribe the CPU, and OpenMP threads
    busy-wait for each other. An OMP_NUM_THREADS the user set is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_cores_between_workers()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its count of generated bad inputs to the controller (pytest_testnodedown)."""
    from support import FUZZ

    workeroutput = getattr(session.config, "workeroutput", None)  # set by xdist on workers only
    if workeroutput is not None:
        workeroutput["fuzz"] = dict(FUZZ)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """The controller adds up the workers' counts of generated bad inputs."""
    from support import FUZZ

    for key, value in getattr(node, "workeroutput", {}).get("fuzz", {}).items():
        FUZZ[key] += value


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The count of generated bad inputs tried (tests/test_bad_inputs.py, in every worker), printed and written to
    $THREEDISTILL_FUZZ_REPORT."""
    from support import FUZZ

    if FUZZ["cases"]:
        line = f"generated bad inputs: {FUZZ['cases']} cases, {FUZZ['tracebacks']} tracebacks"
        terminalreporter.write_line(line)
        report = os.environ.get("THREEDISTILL_FUZZ_REPORT")
        if report:
            Path(report).write_text(json.dumps(FUZZ) + "\n")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `cuda`-marked tests on machines without a CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def reference_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """toyworld references are cached once per test session, never in the user's cache."""
    path = str(tmp_path_factory.mktemp("toyworld-cache"))
    os.environ["THREEDISTILL_CACHE"] = path
    return path


@pytest.fixture
def one_thread() -> Any:
    """One torch thread for the test: resumed runs then end bit for bit like uninterrupted ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny Stable-Diffusion-shaped pipeline kind, built once per session."""
    from support import KINDS, build_tiny_sd

    root = tmp_path_factory.mktemp("tiny-sd")
    return {kind: build_tiny_sd(root / kind, kind) for kind in KINDS}


@pytest.fixture(scope="session")
def tiny_ip2p(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny InstructPix2Pix pipeline, built once per session."""
    from support import build_tiny_ip2p

    return build_tiny_ip2p(tmp_path_factory.mktemp("tiny-ip2p") / "ip2p")


@pytest.fixture(scope="session")
def tiny_t2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny text-to-video pipeline, built once per session."""
    from support import build_tiny_t2v

    return build_tiny_t2v(tmp_path_factory.mktemp("tiny-t2v") / "t2v")


@pytest.fixture(scope="session")
def tiny_mvdream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MVDream folder in the public diffusers-format layout, built once per session."""
    from support import build_tiny_mvdream

    return build_tiny_mvdream(tmp_path_factory.mktemp("tiny-mvdream") / "mvdream")


@pytest.fixture(scope="session")
def tiny_zero123(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Zero123 folder in ashawkey's public diffusers-format layout, built once per session."""
    from support import build_tiny_zero123

    return build_tiny_zero123(tmp_path_factory.mktemp("tiny-zero123") / "zero123")


@pytest.fixture(scope="session")
def duck_front(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """toyworld's front view of "a yellow duck" as an RGBA PNG (64 px): an image-to-3D input."""
    from threedistill.cli import main

    path = tmp_path_factory.mktemp("duck") / "duck.png"
    assert main(["toyworld", "render", "a yellow duck", str(path), "--resolution", "64"]) == 0
    return path


@pytest.fixture(scope="session")
def tiny_if(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DeepFloyd IF stage-I folder (IFPipeline layout), built once per session."""
    from support import build_tiny_if

    return build_tiny_if(tmp_path_factory.mktemp("tiny-if") / "if")


@pytest.fixture(scope="session")
def tiny_controlnet(tmp_path_factory: pytest.TempPathFactory, tiny_sd: dict[str, Path]) -> Path:
    """A tiny ControlNetModel (3 condition channels) for the tiny SD 1.x pipeline, built once per session."""
    from support import build_tiny_controlnet

    return build_tiny_controlnet(tmp_path_factory.mktemp("tiny-controlnet") / "controlnet", tiny_sd["sd1"])


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory, reference_cache: str) -> Path:
    """One finished tiny toyworld Gaussians run made through the Python API, shared by the tests that
    only read a run (API, viewer, exports opened by real clients, TensorBoard): it exports splats,
    the turntable and the meshes, and logs to TensorBoard."""
    from support import tiny_run_kwargs

    import threedistill as td

    run = td.run(prompt="a red mug", out=tmp_path_factory.mktemp("finished-run"), **tiny_run_kwargs(), **{"log.tensorboard": True})
    assert run.finished and not run.interrupted
    return run.run_dir


@pytest.fixture(scope="session")
def made_run(tmp_path_factory: pytest.TempPathFactory, reference_cache: str):
    """`made_run(kind)`: a finished tiny run of a NeRF ("nerf"), a mesh ("mesh") or a 4D Gaussians
    asset ("4d") that exports mesh.glb, made once per session on first use."""
    from support import tiny_kind_flags

    import threedistill as td
    from threedistill.engine.plan import parse_run_plan

    made: dict[str, Path] = {}

    def make(kind: str) -> Path:
        if kind not in made:
            flags = [*tiny_kind_flags(kind), "--out", str(tmp_path_factory.mktemp(f"run-{kind}"))]
            run = td.run_plan(parse_run_plan(flags))
            assert run.finished
            made[kind] = run.run_dir
        return made[kind]
    return make
