"""Every bad input ends with one line on stderr, exit code 2 and no traceback."""

from pathlib import Path

import pytest

from support import assert_one_line_error, run_cli, run_cli_process


@pytest.mark.parametrize(
    "args,needles",
    [
        (["run", "--guidance", "nope"], ["unknown guidance 'nope'", "sds"]),
        (["run", "--representation", "voxels"], ["unknown representation 'voxels'", "gaussians"]),
        (["run", "--prior", "imagen"], ["unknown prior 'imagen'", "toyworld"]),
        (["run", "--prior", "toyworld", "--prompt", "a corgi", "--out", "{tmp}"], ["unknown toyworld prompt 'a corgi'", "mug"]),
        (["run", "--steps", "many"], ["--steps"]),
        (["run", "--stepz", "3"], ["--stepz"]),
        (["run", "--config", "{tmp}/missing.yaml"], ["config file not found"]),
        (["run", "--prior", "toyworld", "--prior.mesh", "{tmp}/nope.glb", "--out", "{tmp}"], ["mesh file not found"]),
        (["resume", "{tmp}/no-run"], ["run folder not found"]),
        (["export", "{tmp}/no-run", "--format", "gif"], ["invalid choice"]),
        (["frobnicate"], ["unknown command 'frobnicate'"]),
        (["toyworld", "scene", "a corgi", "{tmp}/scene"], ["unknown toyworld prompt"]),
    ],
)
def test_bad_input_is_one_line(args: list[str], needles: list[str], tmp_path: Path) -> None:
    proc = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert_one_line_error(proc, *needles)
    # a failed run leaves no run folder behind
    assert not any(p.is_dir() and p.name.startswith("sds-") for p in tmp_path.rglob("*"))


def test_bad_input_through_the_real_console_script_is_one_line(tmp_path: Path) -> None:
    """The in-process runner above shares the interpreter; this one starts Python the user's way,
    so import-time warnings or a broken entry point would show up on stderr."""
    proc = run_cli_process("run", "--prior", "toyworld", "--prompt", "a corgi", "--out", str(tmp_path))
    assert_one_line_error(proc, "unknown toyworld prompt 'a corgi'")


def test_cuda_without_a_gpu_is_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert_one_line_error(run_cli("run", "--device", "cuda", "--out", str(tmp_path)), "no CUDA GPU")


def test_malformed_config_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("representation:\n  num_pointz: 10\n")
    assert_one_line_error(run_cli("run", "--config", str(bad)), "num_pointz")


def test_corrupt_checkpoint_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("prompt: a red cube\nsteps: 2\n")
    (run / "checkpoints" / "last.pt").write_bytes(b"\x00garbage")
    assert_one_line_error(run_cli("resume", str(run)), "corrupt")


def test_toyworld_list() -> None:
    proc = run_cli("toyworld", "list")
    assert proc.returncode == 0
    assert "a ball" in proc.stdout and "multi-modal" in proc.stdout and "asymmetric" in proc.stdout
    assert len(proc.stdout.splitlines()) >= 10


def test_toyworld_scene(tmp_path: Path) -> None:
    from threedistill.scene.loading import load_scene

    proc = run_cli("toyworld", "scene", "a red mug", str(tmp_path / "scene"), "--views", "6", "--resolution", "32")
    assert proc.returncode == 0, proc.stderr
    scene = load_scene(tmp_path / "scene")
    images, cams = scene.images, scene.cameras
    assert images.shape == (6, 3, 32, 32) and len(cams) == 6
    assert (images < 0.5).any() and (images > 0.99).any()  # an object on a white background


def test_help() -> None:
    proc = run_cli("run", "--prior", "toyworld", "--help")
    assert proc.returncode == 0 and "--guidance" in proc.stdout and "--prior.kappa" in proc.stdout


def test_run_then_export(tmp_path: Path) -> None:
    from support import TINY_FLAGS

    proc = run_cli("run", *TINY_FLAGS, "--prompt", "a red cube", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert (run / "metrics.json").exists()
    (run / "export" / "splats.ply").unlink()
    proc = run_cli("export", str(run), "--format", "splat", "glb", "--mesh-resolution", "32")  # a list, as the README writes it
    assert proc.returncode == 0, proc.stderr
    assert (run / "export" / "splats.ply").exists() and (run / "export" / "mesh.glb").exists()
    assert [Path(line).name for line in proc.stdout.split()] == ["splats.ply", "mesh.glb"]
    assert not (run / "checkpoints" / "step-000007.pt").exists(), "export does not train"
