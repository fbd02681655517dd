"""Faults injected into tiny runs, and the promise each must keep (docs/reliability.md):
stop signals at any point, SIGKILL mid-write, a full disk, out of memory, a NaN storm, runs
started together, damaged caches. Runs are in-process (the CLI's `main`) except where a process
must die."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from support import TINY_FLAGS, error_lines, fill_disk_for, run_killed_while_writing, run_cli
from threedistill.engine.checkpoint import load_checkpoint

FLAGS = [*TINY_FLAGS, "--log.export-formats", "splat"]
"""6 steps, checkpoints at 3 and 6."""


pytestmark = pytest.mark.usefixtures("one_thread")


def _run_dir(out: Path) -> Path:
    (run,) = [p for p in out.glob("*/*") if p.is_dir()]
    return run


def _final(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["representation"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


STAGED = "stages:\n  - {name: first, share: 0.5}\n  - {name: second, share: 0.5}\n"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    """Final parameters of uninterrupted runs (single stage and two stages), on one thread."""
    from threedistill.cli import main

    root = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (root / "staged.yaml").write_text(STAGED)
        assert main(["run", *FLAGS, "--out", str(root / "single")]) == 0
        assert main(["run", *FLAGS, "--config", str(root / "staged.yaml"), "--out", str(root / "staged")]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"single": _final(_run_dir(root / "single")), "staged": _final(_run_dir(root / "staged"))}


# ---------------------------------------------------------------------- stop signals at any point
def _signal_when(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, signum: int, when: Callable[..., bool],
                 times: int = 1) -> None:
    """Deliver `signum` (`times` times) to this process when `owner.name(...)` is called and `when(...)` holds."""
    real = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            for _ in range(times):
                signal.raise_signal(signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def _point(monkeypatch: pytest.MonkeyPatch, point: str, signum: int) -> None:
    from threedistill.engine import loop
    from threedistill.engine.loop import StageTrainer
    from threedistill.engine.priors import PriorPool

    if point == "loading the prior":
        _signal_when(monkeypatch, PriorPool, "get", signum, lambda *a, **k: True)
    elif point == "a step":
        _signal_when(monkeypatch, StageTrainer, "train_step", signum, lambda self: self.step == 2)
    elif point == "two signals in a step":
        _signal_when(monkeypatch, StageTrainer, "train_step", signum, lambda self: self.step == 2, times=2)
    elif point == "a checkpoint write":
        _signal_when(monkeypatch, loop, "save_checkpoint", signum, lambda path, state: path.name == "step-000003.pt")
    elif point == "the exports":
        _signal_when(monkeypatch, loop, "export_asset", signum, lambda *a, **k: True)
    elif point == "the second stage's start":
        _signal_when(monkeypatch, StageTrainer, "__init__", signum, lambda self, run, index, previous=None: index == 1)


POINTS = {  # point -> (the checkpoint's step after the signal, staged run)
    "loading the prior": (None, False),
    "a step": (3, False),
    "two signals in a step": (0, False),
    "a checkpoint write": (3, False),
    "the exports": (6, False),
    "the second stage's start": (3, True),
}


@pytest.mark.parametrize("signum,point", [(signal.SIGTERM, p) for p in POINTS] + [(signal.SIGINT, "a step"), (signal.SIGINT, "the exports")])
def test_a_stop_signal_at_any_point_keeps_a_checkpoint_and_resume_ends_as_an_uninterrupted_run(
        signum: int, point: str, reference: dict[str, dict[str, torch.Tensor]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    step, staged = POINTS[point]
    (tmp_path / "staged.yaml").write_text(STAGED)
    extra = ["--config", str(tmp_path / "staged.yaml")] if staged else []
    with monkeypatch.context() as patch:
        _point(patch, point, signum)
        proc = run_cli("run", *FLAGS, *extra, "--out", str(tmp_path / "out"))
    assert proc.returncode == 128 + signum, proc.stderr
    assert "Traceback" not in proc.stderr and signal.Signals(signum).name in proc.stderr
    if step is None:  # stopped before the run had anything: no folder left behind
        assert not any((tmp_path / "out").rglob("*"))
        return
    run = _run_dir(tmp_path / "out")
    assert f"threedistill resume {run}" in proc.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == step
    assert run_cli("resume", str(run)).returncode == 0
    _same(_final(run), reference["staged" if staged else "single"])
    assert (run / "export" / "splats.ply").is_file() and not list(run.rglob(".*.tmp*"))


# ---------------------------------------------------------------------- SIGKILL while writing
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_last_pt(reference: dict[str, dict[str, torch.Tensor]], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    # last.pt is written at step 0, 3 and 6: the process dies half-way through the third write
    proc = run_killed_while_writing("last.pt", 3, "run", *FLAGS, "--out", str(tmp_path))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run = _run_dir(tmp_path)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3  # intact and loadable
    assert len(list((run / "checkpoints").glob(".last.*.tmp.pt"))) == 1  # the cut-off write
    assert run_cli("resume", str(run)).returncode == 0
    _same(_final(run), reference["single"])
    assert not list(run.rglob(".*.tmp*")), "resume removes the dead writer's temporary file"


def test_sigkill_during_an_export_keeps_the_previous_exports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import trimesh

    from threedistill.export.splat_ply import read_splat_ply

    assert run_cli("run", *FLAGS, "--log.export-formats", "splat", "glb", "ply", "--mesh.resolution", "32",
                    "--out", str(tmp_path)).returncode == 0
    run = _run_dir(tmp_path)
    before = _hashes(run / "export")
    proc = run_killed_while_writing("mesh.glb", 1, "export", str(run), "--format", "splat", "--format", "glb",
                                    "--mesh-resolution", "32")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _hashes(run / "export").items() >= {k: v for k, v in before.items() if k == "mesh.glb"}.items()
    assert trimesh.load(run / "export" / "mesh.glb", force="mesh").faces.shape[0] > 0
    assert trimesh.load(run / "export" / "mesh.ply").faces.shape[0] > 0
    assert read_splat_ply(run / "export" / "splats.ply")["means"].shape[0] > 0
    assert run_cli("export", str(run), "--format", "glb", "--mesh-resolution", "32").returncode == 0
    assert not list(run.rglob(".*.tmp*")), "the next export removes the dead writer's temporary file"


# ---------------------------------------------------------------------- a full disk
def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_keeps_the_last_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    failed = fill_disk_for(monkeypatch, {"last.pt"}, after=2)  # step 0 and 3 are written, step 6 is not
    proc = run_cli("run", *FLAGS, "--out", str(tmp_path))
    assert proc.returncode == 3, proc.stderr
    (line,) = error_lines(proc)
    run = _run_dir(tmp_path)
    assert f"'{failed[0]}'" in line and "No space left on device" in line and f"threedistill resume {run}" in line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3
    assert not list(run.rglob(".*.tmp*"))


@pytest.mark.parametrize("target", ["mesh.glb", "turntable.mp4"])
def test_a_full_disk_while_exporting_is_one_line_and_keeps_earlier_exports(
        target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert run_cli("run", *FLAGS, "--log.export-formats", "glb", "video", "--mesh.resolution", "32",
                    "--out", str(tmp_path)).returncode == 0
    run = _run_dir(tmp_path)
    before = _hashes(run / "export")
    fill_disk_for(monkeypatch, {target})
    proc = run_cli("export", str(run), "--format", "glb", "--format", "video", "--mesh-resolution", "32")
    assert proc.returncode == 3
    (line,) = error_lines(proc)
    assert f"{run / 'export' / target}'" in line and "No space left on device" in line and "threedistill export" in line
    assert _hashes(run / "export")[target] == before[target]
    assert not list(run.rglob(".*.tmp*"))


def test_a_full_disk_while_writing_the_reference_cache_is_a_warning_and_the_run_finishes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("THREEDISTILL_CACHE", str(cache))
    assert run_cli("run", *FLAGS, "--prompt", "a red cube", "--out", str(tmp_path / "a")).returncode == 0
    earlier = _hashes(cache)
    assert earlier
    fill_disk_for(monkeypatch, lambda target: cache in target.parents)
    proc = run_cli("run", *FLAGS, "--prompt", "a blue cone", "--out", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and str(cache / "toyworld") in warnings[0] and "No space left on device" in warnings[0], warnings
    assert _hashes(cache) == earlier  # the earlier cache files are intact, nothing half-written was added


def test_a_full_disk_while_writing_the_embedding_cache_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from threedistill.priors.prompts import PromptConfig, PromptEmbedder

    config = PromptConfig(cache_dir=str(tmp_path))
    PromptEmbedder(_NamedPrior(), "a corgi", config=config)
    earlier = _hashes(tmp_path)
    capsys.readouterr()
    fill_disk_for(monkeypatch, lambda target: True)
    embedder = PromptEmbedder(_NamedPrior(), "a cat", config=config)
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "text-embedding cache" in warnings[0] and str(tmp_path / "embeddings") in warnings[0], err
    assert embedder.view_embeddings  # it still works, uncached
    assert _hashes(tmp_path) == earlier


class _NamedPrior:
    """A prior with a model id (so embeddings are cached) and embeddings that depend on the text."""

    model_id = "fault-test-model"
    device = torch.device("cpu")

    def __init__(self) -> None:
        from threedistill.priors.base import GuidanceDefaults

        self.defaults = GuidanceDefaults(cfg_scale=1.0, min_step=20, max_step=980)

    def embed(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([torch.full((4, 8), float(len(t))) for t in texts])


# ---------------------------------------------------------------------- out of memory
@pytest.mark.parametrize("error", ["gpu-allocator", "cpu-allocator", pytest.param("real-gpu-allocator", marks=pytest.mark.cuda)])
def test_out_of_memory_is_one_line_with_the_knobs_and_a_checkpoint_of_the_last_good_step(
        error: str, reference: dict[str, dict[str, torch.Tensor]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from threedistill.representations.gaussians import Gaussians

    real = Gaussians.render
    calls = {"n": 0}

    def render(self: Gaussians, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 5:  # the 5th training render: step 5
            if error == "gpu-allocator":  # what the CUDA caching allocator raises
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8.00 GiB total capacity)")
            torch.empty(1 << 50, device="cuda" if error == "real-gpu-allocator" else "cpu")  # the allocator's own failure: 4 PiB
        return real(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Gaussians, "render", render)
        proc = run_cli("run", *FLAGS, "--out", str(tmp_path))
    assert proc.returncode == 3
    (line,) = error_lines(proc)
    run = _run_dir(tmp_path)
    for needle in ("out of memory at step 5", "saved the checkpoint of step 4", "sampler.batch_size", "sampler.width",
                   f"{run}/config.yaml", f"threedistill resume {run}"):
        assert needle in line, line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    assert run_cli("resume", str(run)).returncode == 0
    _same(_final(run), reference["single"])  # the failed step was rolled back exactly


# ---------------------------------------------------------------------- a NaN storm
def test_a_nan_storm_stops_with_the_checkpoint_from_before_it_and_names_the_causes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                                  capsys: pytest.CaptureFixture) -> None:
    from threedistill.guidance.sds import SDSGuidance

    real = SDSGuidance.__call__

    def diverged(self: Any, images: Any, cams: Any, emb: Any, step: int, out: Any = None) -> Any:
        result = real(self, images, cams, emb, step, out)
        if step >= 4:
            result.loss = result.loss * float("nan")
        return result

    monkeypatch.setattr(SDSGuidance, "__call__", diverged)
    proc = run_cli("run", *FLAGS, "--steps", "20", "--log.max-nonfinite-steps", "5", "--out", str(tmp_path))
    assert proc.returncode == 3
    (line,) = error_lines(proc)
    for needle in ("5 steps in a row (4-8)", "checkpoint of step 3", "learning rate", "guidance.cfg_scale", "threedistill resume"):
        assert needle in line, line
    run = _run_dir(tmp_path)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 3 and state["skipped_steps"] == 0
    assert all(torch.isfinite(t).all() for t in state["representation"].values())
    monkeypatch.setattr(SDSGuidance, "__call__", real)
    assert run_cli("resume", str(run)).returncode == 0  # resumes from before the storm


def test_non_finite_gradients_are_skipped_and_never_reach_the_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture) -> None:
    from threedistill.engine.loop import StageTrainer

    real = StageTrainer._gradients_finite

    def poisoned(self: StageTrainer) -> bool:  # a finite loss whose gradient overflowed at steps 2 and 3
        if self.step + 1 in (2, 3):
            next(p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None).grad.fill_(float("inf"))
        return real(self)

    monkeypatch.setattr(StageTrainer, "_gradients_finite", poisoned)
    assert run_cli("run", *FLAGS, "--out", str(tmp_path)).returncode == 0  # 2 < the default limit (20)
    run = _run_dir(tmp_path)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["skipped_steps"] == 2 and all(torch.isfinite(t).all() for t in state["representation"].values())
    assert (run / "log.txt").read_text().count("non-finite gradient, step skipped") == 2


# ---------------------------------------------------------------------- runs started together
def test_two_runs_started_in_the_same_second_share_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    import time

    from threedistill.engine import run_dir

    monkeypatch.setattr(run_dir.time, "strftime", lambda fmt, *a: "20260101-000000" if "%H" in fmt and "-" in fmt else time.strftime(fmt, *a))
    assert run_cli("run", *FLAGS, "--out", str(tmp_path)).returncode == 0
    (first,) = tmp_path.glob("*/*")
    files = _hashes(first)
    assert run_cli("run", *FLAGS, "--out", str(tmp_path)).returncode == 0
    folders = sorted(tmp_path.glob("*/*"))
    assert [f.name for f in folders] == ["sds-gaussians-20260101-000000", "sds-gaussians-20260101-000000-1"]
    assert _hashes(first) == files  # the second run wrote nothing into the first one's folder


def _claim_folder(out: str) -> str:
    import time

    from threedistill.engine import run_dir

    run_dir.time.strftime = lambda fmt, *a: "20260101-000000"  # type: ignore[assignment]  # (in a worker process)
    time.sleep(0.2)
    return str(run_dir.new_run_dir(out, "a red mug", "sds", "gaussians"))


def test_runs_racing_for_a_folder_each_get_their_own(tmp_path: Path) -> None:
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(6) as pool:
        folders = pool.map(_claim_folder, [str(tmp_path)] * 12)
    assert len(set(folders)) == 12 and all(Path(f).is_dir() and Path(f).parent.parent == tmp_path for f in folders)


def test_a_failed_run_removing_its_prompt_folder_does_not_break_another_starting_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from threedistill.engine import run_dir
    from threedistill.engine.run import remove_run_folder

    real_mkdir = Path.mkdir
    removed = {"done": False}

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:  # the other run removes the prompt folder right after we made it
        real_mkdir(self, *args, **kwargs)
        if self == tmp_path / "a-red-mug" and not removed["done"]:
            removed["done"] = True
            remove_run_folder(tmp_path / "a-red-mug" / "failed-run")

    monkeypatch.setattr(Path, "mkdir", mkdir)
    folder = run_dir.new_run_dir(tmp_path, "a red mug", "sds", "gaussians")
    assert removed["done"] and folder.is_dir() and folder.parent == tmp_path / "a-red-mug"


# ---------------------------------------------------------------------- damaged caches
def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "bit flip":
        import zipfile

        with zipfile.ZipFile(path) as archive:  # flip a byte inside the largest tensor's data
            info = max(archive.infolist(), key=lambda i: i.file_size)
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
        data[offset] ^= 0x40
        path.write_bytes(bytes(data))
    elif how == "other content":
        state = torch.load(path, weights_only=True)
        state["tensors"] = {k: torch.zeros_like(v) for k, v in state["tensors"].items()}
        torch.save(state, path)


@pytest.mark.parametrize("how", ["truncated", "bit flip", "other content"])
def test_a_damaged_reference_cache_is_detected_and_re_rendered(how: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from threedistill.core.cameras import OrbitSamplerConfig
    from threedistill.priors.toyworld.prior import ToyworldConfig, ToyworldPrior

    config = ToyworldConfig(num_references=8, resolution=16, uncond_references_per_object=1, cache_dir=str(tmp_path))

    def references() -> torch.Tensor:
        prior = ToyworldPrior(config, OrbitSamplerConfig(width=16, height=16))
        return prior.reference_set(int(prior.embed(["a red mug"])[0])).x

    fresh = references()
    (path,) = (tmp_path / "toyworld").glob("*.pt")
    _damage(path, how)
    capsys.readouterr()
    again = references()
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and str(path) in err and "corrupt" in err and "rebuilding" in err, err
    torch.testing.assert_close(again, fresh, atol=0, rtol=0)  # re-rendered, not read from the damaged file
    assert references() is not None and "warning" not in capsys.readouterr().err  # and rewritten whole


@pytest.mark.parametrize("how", ["truncated", "bit flip", "other content"])
def test_a_damaged_embedding_cache_is_detected_and_recomputed(how: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from threedistill.priors.prompts import PromptConfig, PromptEmbedder

    config = PromptConfig(cache_dir=str(tmp_path), view_dependent=False)
    fresh = PromptEmbedder(_NamedPrior(), "a corgi", config=config)._plain
    path = next(p for p in (tmp_path / "embeddings").glob("*.pt") if torch.load(p, weights_only=True)["meta"]["text"] == "a corgi")
    _damage(path, how)
    capsys.readouterr()
    again = PromptEmbedder(_NamedPrior(), "a corgi", config=config)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and str(path) in err and "corrupt" in err, err
    torch.testing.assert_close(again._plain, fresh, atol=0, rtol=0)


def test_a_partly_downloaded_model_is_refused_before_any_work(tiny_sd: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from threedistill.core.errors import UserError
    from threedistill.priors.diffusers.stable_diffusion import StableDiffusionConfig

    def refused(folder: Path, *needles: str) -> None:
        with pytest.raises(UserError) as err:
            StableDiffusionConfig(model=str(folder)).check()  # the plan's check: nothing is loaded
        message = str(err.value)
        assert "\n" not in message and "partly downloaded" in message, message
        for needle in needles:
            assert needle in message, message

    missing = shutil.copytree(tiny_sd["sd1"], tmp_path / "missing")
    shutil.rmtree(missing / "unet")
    refused(missing, "'unet' folder is missing")
    truncated = shutil.copytree(tiny_sd["sd1"], tmp_path / "truncated")
    weights = next((truncated / "vae").glob("*.safetensors"))
    os.truncate(weights, weights.stat().st_size - 100)
    refused(truncated, "vae/", "is truncated")
    linked = shutil.copytree(tiny_sd["sd1"], tmp_path / "linked")  # the Hub cache's snapshot links, one without its blob
    config = next((linked / "unet").glob("*.json"))
    config.unlink()
    config.symlink_to(tmp_path / "blobs" / "0123abcd")
    refused(linked, "links to a missing file")
