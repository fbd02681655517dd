import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from support import TINY_FLAGS, run_cli, tiny_config, trainer_for
from threedistill.engine.loop import StageTrainer
from threedistill.eval.metrics import psnr
from threedistill.export.splat_ply import read_splat_ply
from threedistill.representations.gaussians import PARAM_NAMES, Gaussians
from threedistill.engine.run_dir import new_run_dir
from threedistill.engine.run import Run


def _trainer(tmp_path: Path, *extra: str) -> StageTrainer:
    names, cfg = tiny_config("--out", str(tmp_path), *extra)
    run_dir = new_run_dir(cfg.out, cfg.prompt, names.guidance, names.representation)
    trainer = trainer_for(names, cfg, run_dir)
    return trainer


def test_tiny_run_writes_the_run_folder(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "--prompt", "a red cube", "--log.export-formats", "splat", "video", "glb", "ply",
                       "--mesh.resolution", "48", "--mesh.calibration-resolution", "32")  # every file, not the default detail
    start = [p.detach().clone() for p in trainer.representation.parameters()]
    assert trainer.train()
    summary = trainer.finish()
    run = trainer.run_dir
    assert run.parent.name == "a-red-cube" and run.name.startswith("sds-gaussians-")
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"mask_iou", "psnr", "seconds", "steps", "chamfer"} and metrics == summary
    assert 0 <= metrics["mask_iou"] <= 1 and metrics["steps"] == 6
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7)) and all("loss" in r for r in rows)
    assert "finished" in (run / "log.txt").read_text()
    for name in ("config.yaml", "log.txt", "checkpoints/last.pt", "checkpoints/step-000003.pt", "previews/step-000003.png",
                 "export/splats.ply", "export/turntable.mp4", "export/turntable.gif", "export/mesh.glb", "export/mesh.ply"):
        assert (run / name).exists(), name
    assert not list(run.rglob("*.tmp*")), "no temporary files are left behind"
    moved = [not torch.equal(a, b) for a, b in zip(start, trainer.representation.parameters())]
    assert any(moved)


def test_run_folders_never_collide(tmp_path: Path) -> None:
    dirs = {new_run_dir(tmp_path, "a ball", "sds", "gaussians") for _ in range(3)}
    assert len(dirs) == 3


def _params(trainer: StageTrainer) -> dict[str, torch.Tensor]:
    return {n: getattr(trainer.representation, n).detach().clone() for n in PARAM_NAMES}


def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    # Bit-exact on one thread: with several, BLAS reductions may differ in the last bit
    # between any two runs (resumed or not), depending on memory alignment.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_resume(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _check_resume(tmp_path: Path) -> None:
    densify = ["--steps", "10", "--representation.densify-from", "2", "--representation.densify-until", "9",
               "--representation.densify-every", "3", "--representation.densify-grad-threshold", "1e-6"]
    straight = _trainer(tmp_path / "a", *densify)
    assert straight.train()

    first = _trainer(tmp_path / "b", *densify)
    assert first.train(until=4)
    first.save_checkpoint()
    resumed = Run.resume(first.run_dir).trainer
    assert resumed.step == 4
    assert resumed.train()

    a, b = _params(straight), _params(resumed)
    assert a["means"].shape[0] != 300, "densification ran inside the resumed window"
    for name in PARAM_NAMES:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)


def test_splat_ply_round_trip_renders_the_same_image(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "--representation.sh-degree", "1")
    trainer.train()
    (path,) = trainer.exports.export(["splat"]).files
    loaded = Gaussians.from_splat_tensors(read_splat_ply(path))
    assert loaded.sh_degree == 1 and loaded.num_points == trainer.representation.num_points
    from threedistill.core.cameras import heldout_cameras

    cams = heldout_cameras(4, 48, 48)
    bg = torch.ones(3)
    with torch.no_grad():
        before = trainer.representation.render(cams, bg).rgb
        after = loaded.render(cams, bg).rgb
    assert psnr(after, before) >= 40


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, and a cluster's preemption
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(signum: int, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "threedistill.cli", "run", *TINY_FLAGS, "--steps", "100000", "--out", str(tmp_path),
           "--log.checkpoint-every", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    log = None
    while time.time() < deadline and log is None:
        time.sleep(0.5)
        found = [p for p in tmp_path.rglob("metrics.jsonl") if p.stat().st_size > 0]
        log = found[0] if found else None
    assert log is not None, "the run never logged a step"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "resume" in err
    run = log.parent
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] >= 1
    # finish the run quickly from where it stopped
    cfg = (run / "config.yaml").read_text().replace("steps: 100000", f"steps: {state['step'] + 2}")
    (run / "config.yaml").write_text(cfg)
    done = run_cli("resume", str(run))  # in this process (the interrupt above needed a real one)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "metrics.json").read_text())["steps"] == state["step"] + 2


def test_densify_and_prune_keeps_optimizer_state_aligned() -> None:
    from threedistill.representations.gaussians import GaussiansConfig

    cfg = GaussiansConfig(num_points=50, densify_grad_threshold=0.5, percent_dense=0.02, prune_opacity=0.2)
    g = Gaussians(cfg, torch.Generator().manual_seed(0), backend="torch")
    with torch.no_grad():
        g.log_scales[:10] = torch.log(torch.tensor(0.01))  # small: cloned
        g.log_scales[10:20] = torch.log(torch.tensor(0.1))  # large: split
        g.opacity_logits[40:] = -5.0  # transparent: pruned
    opt = torch.optim.Adam(g.param_groups())
    sum(p.sum() for p in g.parameters()).backward()
    opt.step()
    g.grad_accum[:20] = 1.0
    g.grad_count[:20] = 1.0
    moments_before = opt.state[g.means]["exp_avg"].clone()
    parents = g.log_scales.detach()[10:20].exp().clone()
    stats = g.densify_and_prune(opt)
    assert stats == {"cloned": 10, "split": 10, "pruned": 10}
    assert g.num_points == 50 + 10 + 10 - 10
    for group in opt.param_groups:
        p = group["params"][0]
        assert p.shape[0] == g.num_points and opt.state[p]["exp_avg"].shape == p.shape
    # kept Gaussians keep their moments; new ones start from zero
    torch.testing.assert_close(opt.state[g.means]["exp_avg"][:10], moments_before[:10])
    assert opt.state[g.means]["exp_avg"][-20:].abs().sum() == 0
    # split children are smaller than their parent
    torch.testing.assert_close(g.log_scales.detach()[-10:].exp(), parents / 1.6)
    torch.testing.assert_close(g.log_scales.detach()[-20:-10].exp(), parents / 1.6)


def test_relocation_moves_faint_gaussians_onto_live_ones_and_keeps_their_opacity() -> None:
    """3DGS-MCMC relocation: the count is kept, no Gaussian stays below the threshold, each live target and its
    copies together are exactly as opaque as it was, copies sit near it, and their Adam moments start at zero."""
    from threedistill.representations.gaussians import GaussiansConfig

    cfg = GaussiansConfig(num_points=40, relocate_every=10, relocate_until=150, relocate_opacity=0.02)
    g = Gaussians(cfg, torch.Generator().manual_seed(0), backend="torch")
    opt = torch.optim.Adam(g.param_groups())
    sum(p.sum() for p in g.parameters()).backward()
    opt.step()
    with torch.no_grad():
        g.opacity_logits[:] = torch.linspace(-1.0, 2.0, 40)
        g.opacity_logits[30:] = -6.0  # faint: relocated
        g.sh_dc[:, 0, 0] = torch.arange(40.0)  # tells the copies of each target apart
    before = torch.sigmoid(g.opacity_logits.detach()).clone()
    means_before = g.means.detach().clone()
    moments_before = opt.state[g.means]["exp_avg"].clone()
    assert g.relocate_dead(opt) == 10 and g.num_points == 40
    after = torch.sigmoid(g.opacity_logits.detach())
    assert (after >= 0.02).all()
    for target in range(30):  # itself plus its copies: 1 - prod(1 - o) is its old opacity
        copies = [i for i in range(30, 40) if g.sh_dc.detach()[i, 0, 0] == target]
        assert all((g.means.detach()[i] - means_before[target]).norm() < 0.5 for i in copies)
        transmittance = (1 - after[[target, *copies]]).prod()
        torch.testing.assert_close(1 - transmittance, before[target], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g.means.detach()[:30], means_before[:30])
    assert opt.state[g.means]["exp_avg"][30:].abs().sum() == 0
    torch.testing.assert_close(opt.state[g.means]["exp_avg"][:30], moments_before[:30])
    assert g.relocate_due(150) and not g.relocate_due(155) and not g.relocate_due(50) and not g.relocate_due(160)


def test_init_from_point_cloud(tmp_path: Path) -> None:
    import numpy as np
    from plyfile import PlyData, PlyElement

    from threedistill.representations.gaussians import GaussiansConfig
    from threedistill.representations.sh import sh_to_rgb

    pts = np.zeros(5, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    pts["x"] = np.linspace(-0.5, 0.5, 5)
    pts["red"] = 255
    path = tmp_path / "cloud.ply"
    PlyData([PlyElement.describe(pts, "vertex")]).write(str(path))
    g = Gaussians(GaussiansConfig(init="points", init_points=str(path)), torch.Generator())
    assert g.num_points == 5
    torch.testing.assert_close(g.means[:, 0].detach(), torch.linspace(-0.5, 0.5, 5))
    torch.testing.assert_close(sh_to_rgb(g.sh_dc.detach(), None, 0), torch.tensor([[1.0, 0.0, 0.0]]).expand(5, 3))


def test_bad_point_cloud_is_a_user_error(tmp_path: Path) -> None:
    import pytest

    from threedistill.core.errors import UserError
    from threedistill.representations.gaussians import GaussiansConfig

    bad = tmp_path / "bad.ply"
    bad.write_text("not a ply")
    with pytest.raises(UserError, match="point cloud"):
        Gaussians(GaussiansConfig(init="points", init_points=str(bad)), torch.Generator())
    with pytest.raises(UserError, match="init-points"):
        Gaussians(GaussiansConfig(init="points"), torch.Generator())
