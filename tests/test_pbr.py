"""PBR materials (DreamMat): the GGX shader against hand-computed values, gradients to roughness and
metallic, dreammat's scheduled coefficients, the glb's textures (Khronos validator), toyworld's PBR
ground truth, and end-to-end runs on toyworld, toyworld-sd and a tiny SD + 22-channel ControlNet."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from support import NODE_PROJECT, KnownEpsPrior, assert_one_line_error, build_tiny_controlnet, run_cli
from threedistill.core.cameras import heldout_cameras
from threedistill.core.types import TextEmbeddings
from threedistill.export.extract import MeshExportConfig
from threedistill.export.mesh import write_glb
from threedistill.guidance.dreammat import DreamMatConfig, DreamMatGuidance
from threedistill.priors.base import GuidanceDefaults
from threedistill.priors.toyworld.catalogue import resolve_prompt
from threedistill.priors.toyworld.materials import face_materials
from threedistill.render.pbr import HELDOUT_LIGHT, TRAINING_LIGHTS, shade
from threedistill.representations.mesh import Mesh, MeshConfig

QUICK = ["--device", "cpu", "--log.no-progress", "--log.turntable-frames", "2", "--log.turntable-resolution", "32",
         "--log.preview-every", "0", "--log.checkpoint-every", "0", "--log.log-every", "1", "--log.eval-views", "4",
         "--sampler.batch-size", "2", "--sampler.width", "32", "--sampler.height", "32", "--mesh.texture-size", "64"]
PBR = ["--representation", "mesh", "--material", "pbr", "--representation.optimise", "texture"]
SMALL_TOYWORLD = ["--prior.resolution", "32", "--prior.num-references", "16", "--prior.uncond-references-per-object", "4"]


def _unit(*v: float) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor([v], dtype=torch.float64), dim=-1)


# ---------------------------------------------------------------------- the shader
def test_without_specular_a_dielectric_is_exactly_lambertian() -> None:
    g = torch.Generator().manual_seed(0)
    n = torch.nn.functional.normalize(torch.randn(50, 3, generator=g, dtype=torch.float64), dim=-1)
    v = torch.nn.functional.normalize(n + 0.5 * torch.randn(50, 3, generator=g, dtype=torch.float64), dim=-1)
    albedo = torch.rand(50, 3, generator=g, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(3, 3, generator=g, dtype=torch.float64), dim=-1)
    colours, ambient = torch.rand(3, 3, generator=g, dtype=torch.float64), torch.tensor([0.2, 0.1, 0.3], dtype=torch.float64)
    out = shade(n, v, albedo, torch.rand(50, generator=g, dtype=torch.float64), torch.zeros(50, dtype=torch.float64), dirs, colours, ambient,
                specular_weight=0.0)
    expected = albedo * ((colours[None] * (n @ dirs.T).clamp(min=0)[..., None]).sum(1) + ambient)
    torch.testing.assert_close(out, expected)


def test_ggx_lobe_matches_hand_computed_values() -> None:
    """Metal, roughness 0.5 (alpha 0.25), normal = view = z, white light of colour 1, no ambient."""
    albedo = torch.tensor([[0.8, 0.6, 0.4]], dtype=torch.float64)
    n = v = _unit(0, 0, 1)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    white = torch.ones(1, 3, dtype=torch.float64)
    # the mirror direction: D = 1 / (pi alpha^2), G = 1, F = F0 = albedo -> pi D / 4 = 4 times albedo
    peak = shade(n, v, albedo, 0.5 * one, one, _unit(0, 0, 1), white, zero)
    torch.testing.assert_close(peak, 4.0 * albedo)
    # light 60 degrees off the normal: h is 30 degrees off it
    l = _unit(math.sin(math.pi / 3), 0, math.cos(math.pi / 3))
    a2, cos_h, n_l = 0.0625, math.cos(math.pi / 6), 0.5
    d = a2 / (math.pi * (cos_h**2 * (a2 - 1) + 1) ** 2)
    g1 = n_l / (n_l * (1 - 0.125) + 0.125)  # k = alpha / 2; G1(n.v = 1) = 1
    f = albedo + (1 - albedo) * (1 - cos_h) ** 5
    expected = n_l * math.pi * d * g1 / (4 * n_l * 1.0) * f
    torch.testing.assert_close(shade(n, v, albedo, 0.5 * one, one, l, white, zero), expected)
    # a dielectric adds the Lambert lobe and reflects F0 = 0.04 at the peak
    torch.testing.assert_close(shade(n, v, albedo, 0.5 * one, 0 * one, _unit(0, 0, 1), white, zero), albedo + 4.0 * 0.04)


def test_gradients_reach_roughness_and_metallic_through_the_render() -> None:
    mesh = Mesh(MeshConfig(material="pbr", init_subdivisions=2, optimise="texture", light_condition=True), torch.Generator().manual_seed(0))
    cams = heldout_cameras(2, 32, 32)
    out = mesh.render(cams, torch.ones(3))
    assert out.rgb.shape == (2, 3, 32, 32) and out.extras["light_index"].tolist() != [-1, -1]
    assert out.extras["light_condition"].shape == (2, 18, 32, 32)
    out.rgb.mean().backward()
    assert mesh.vertex_logits.grad is not None
    for channel in (3, 4):  # roughness, metallic
        assert mesh.vertex_logits.grad[:, channel].abs().sum() > 0
        assert mesh.colour_head.weight.grad[channel].abs().sum() > 0
    with torch.no_grad():  # scoring renders: the held-out light, no light draw
        assert mesh.render(cams, torch.ones(3)).extras["light_index"].tolist() == [-1, -1]


# ---------------------------------------------------------------------- dreammat
def test_dreammat_coefficients_and_timesteps_follow_their_schedules() -> None:
    prior = KnownEpsPrior(defaults=GuidanceDefaults(cfg_scale=1.0, min_step=20, max_step=980))
    guidance = DreamMatGuidance(DreamMatConfig(), prior, 3000, torch.Generator().manual_seed(0))
    assert guidance.coefficients(0) == (1.05, -1.0, 0.0)
    assert guidance.coefficients(1000) == pytest.approx((1.05, -0.75, -0.25))
    assert guidance.coefficients(2500) == pytest.approx((1.05, -0.5, -0.5))
    assert guidance.step_range(0) == (200, 800) and guidance.step_range(499) == (200, 800)
    assert guidance.step_range(500) == (20, 500)
    fraction = DreamMatGuidance(DreamMatConfig(t_switch=0.25, uncond_scale=[(0, -1.0), (1.0, -0.5)]), prior, 100, torch.Generator())
    assert fraction.step_range(24) == (200, 800) and fraction.step_range(25) == (20, 500)
    assert fraction.coefficients(50)[1] == pytest.approx(-0.75)


def test_dreammat_gradient_matches_hand_computation() -> None:
    B, shape = 2, (3, 4, 4)
    prior = KnownEpsPrior(slope=0.5)
    guidance = DreamMatGuidance(DreamMatConfig(t_switch=0), prior, total_steps=10, generator=torch.Generator().manual_seed(3))
    images = torch.rand((B,) + shape, requires_grad=True)
    emb = TextEmbeddings(cond=torch.full((B,), 2.0), uncond=torch.full((B,), -1.0), null=torch.full((B,), 0.5))
    guidance(images, None, emb, step=0).loss.backward()
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(20, 501, (B,), generator=gen)
    noise = torch.randn((B,) + shape, generator=gen)
    abar = prior.alphas_cumprod[t].view(B, 1, 1, 1)
    x_t = abar.sqrt() * images.detach() + (1 - abar).sqrt() * noise
    e = {name: value + 0.5 * x_t for name, value in (("y", 2.0), ("neg", -1.0), ("null", 0.5))}
    expected = (1 - abar) * (1.05 * e["y"] - 1.0 * e["neg"] + 0.0 * e["null"]) / B
    torch.testing.assert_close(images.grad, expected, atol=1e-5, rtol=1e-4)
    assert prior.calls == 1  # the three branches in one batched call


# ---------------------------------------------------------------------- export
def _validate(glb: Path) -> dict:
    if shutil.which("node") is None or not (NODE_PROJECT / "node_modules" / "gltf-validator").is_dir():
        pytest.skip("node and tests/clients/node_modules (npm ci in tests/clients)")
    proc = subprocess.run(["node", str(NODE_PROJECT / "validate_gltf.mjs"), str(glb)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["issues"]["numErrors"] == 0, [m for m in report["issues"]["messages"] if m["severity"] == 0]
    return report


def _glb_material(glb: Path) -> tuple[trimesh.Trimesh, trimesh.visual.material.PBRMaterial]:
    geometry = list(trimesh.load(str(glb)).geometry.values())
    assert len(geometry) == 1
    material = geometry[0].visual.material
    assert isinstance(material, trimesh.visual.material.PBRMaterial)
    assert material.baseColorTexture is not None and material.metallicRoughnessTexture is not None
    return geometry[0], material


def _texels_at_vertices(texture: object, uv: np.ndarray) -> np.ndarray:
    image = np.asarray(texture.convert("RGB"), np.float64) / 255.0  # type: ignore[attr-defined]
    size = image.shape[0]
    return image[np.clip(((1 - uv[:, 1]) * size).astype(int), 0, size - 1), np.clip((uv[:, 0] * size).astype(int), 0, size - 1)]


def test_pbr_glb_carries_base_colour_and_metallic_roughness_textures(tmp_path: Path) -> None:
    mesh = Mesh(MeshConfig(material="pbr", init_subdivisions=2), torch.Generator().manual_seed(0))
    with torch.no_grad():  # albedo, roughness and metallic that vary over the surface
        v = mesh.vertices
        target = torch.cat([4 * v, 3 * v[:, 2:], -3 * v[:, :1]], 1)
        mesh.vertex_logits.copy_(target - mesh._field_logits(v))
    glb = write_glb(tmp_path / "mesh.glb", mesh.as_mesh(), mesh.pbr_material(), MeshExportConfig(texture_size=256))
    _validate(glb)
    geometry, material = _glb_material(glb)
    assert material.metallicFactor == 1.0 and material.roughnessFactor == 1.0
    world = np.stack([geometry.vertices[:, 0], -geometry.vertices[:, 2], geometry.vertices[:, 1]], 1)  # y up -> z up
    truth = 1 / (1 + np.exp(-np.concatenate([4 * world, 3 * world[:, 2:], -3 * world[:, :1]], 1)))
    base = _texels_at_vertices(material.baseColorTexture, geometry.visual.uv)
    rough_metal = _texels_at_vertices(material.metallicRoughnessTexture, geometry.visual.uv)
    assert np.abs(base - truth[:, :3]).mean() < 0.01
    assert np.abs(rough_metal[:, 1] - truth[:, 3]).mean() < 0.01  # glTF: roughness in G
    assert np.abs(rough_metal[:, 2] - truth[:, 4]).mean() < 0.01  # metallic in B


# ---------------------------------------------------------------------- toyworld's ground truth
def test_catalogue_materials_and_pbr_references_under_each_light() -> None:
    from threedistill.priors.toyworld.prior import ToyworldConfig, ToyworldPrior
    from threedistill.core.cameras import OrbitSamplerConfig

    ball = resolve_prompt("a red ball")[0]
    assert np.allclose(face_materials(ball), [0.35, 1.0])
    assert np.allclose(face_materials(resolve_prompt("a red cube")[0]), [0.85, 0.0])
    prior = ToyworldPrior(ToyworldConfig(resolution=32, material="pbr"), OrbitSamplerConfig())
    cams = heldout_cameras(2, 32, 32)
    lit = [prior.render_ground_truth(ball, cams, light).rgb for light in (-1, 0, 1)]
    assert not torch.allclose(lit[0], lit[1]) and not torch.allclose(lit[1], lit[2])
    lambert = ToyworldPrior(ToyworldConfig(resolution=32), OrbitSamplerConfig()).render_ground_truth(ball, cams).rgb
    assert not torch.allclose(lambert, lit[0])
    maps, alpha = prior.material_truth(ball, cams)
    covered = alpha[:, 0] > 0.99
    assert torch.allclose(maps[:, 3][covered], torch.tensor(0.35)) and torch.allclose(maps[:, 4][covered], torch.tensor(1.0))


def test_the_prior_scores_each_view_under_its_own_light() -> None:
    from threedistill.core.cameras import OrbitSamplerConfig
    from threedistill.core.types import RenderOutput
    from threedistill.priors.toyworld.prior import ToyworldConfig, ToyworldPrior

    prior = ToyworldPrior(ToyworldConfig(resolution=16, num_references=32, uncond_references_per_object=4, material="pbr"),
                          OrbitSamplerConfig())
    cams = heldout_cameras(2, 16, 16)
    x = torch.zeros(2, 3, 16, 16)
    emb, t = prior.embed(["a red ball"] * 2), torch.tensor([600, 600])
    denoised = []
    for lights in ([0, 0], [2, 2]):
        prior.observe_render(RenderOutput(x, x[:, :1], x[:, :1], {"light_index": torch.tensor(lights)}), cams)
        denoised.append(prior.denoise(x, t, emb, cams))
    assert not torch.allclose(denoised[0], denoised[1])
    assert set(prior._lit_sets) == {(1, 0), (1, 2)}  # one reference set per (prompt, light)


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def cube_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cube = resolve_prompt("a red cube")[0]
    path = tmp_path_factory.mktemp("pbr-mesh") / "cube.ply"
    trimesh.Trimesh(cube.vertices, cube.faces, process=False).export(str(path))
    return path


def _finished(proc: subprocess.CompletedProcess) -> tuple[Path, dict]:
    assert proc.returncode == 0, proc.stderr
    run = Path(proc.stdout.strip().splitlines()[-1])
    return run, json.loads((run / "metrics.json").read_text())


def test_dreammat_run_on_toyworld_is_scored_and_exports_a_textured_glb(cube_file: Path, tmp_path: Path) -> None:
    run, metrics = _finished(run_cli("run", "--prior", "toyworld", "--prompt", "a red cube", "--guidance", "dreammat", *PBR,
                                     "--representation.path", str(cube_file), "--steps", "4", *SMALL_TOYWORLD, *QUICK,
                                     "--log.export-formats", "glb", "--out", str(tmp_path)))
    for key in ("psnr", "albedo_psnr", "roughness_mean", "metallic_mean", "roughness_error", "metallic_error"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["true_roughness_mean"] == pytest.approx(0.85, abs=1e-3) and metrics["true_metallic_mean"] == pytest.approx(0.0, abs=1e-3)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["grad_norm"] > 0 for r in rows) and rows[0]["s_u"] == pytest.approx(-1.0, abs=1e-3)
    config = (run / "config.yaml").read_text()
    assert "material: pbr" in config  # the prior's references followed the representation
    _validate(run / "export" / "mesh.glb")
    _glb_material(run / "export" / "mesh.glb")


def test_dreammat_run_on_toyworld_sd_is_scored(cube_file: Path, tmp_path: Path) -> None:
    _, metrics = _finished(run_cli("run", "--prior", "toyworld-sd", "--prompt", "a red cube", "--guidance", "dreammat", *PBR,
                                   "--representation.path", str(cube_file), "--steps", "2", *QUICK, "--log.export-formats", "glb",
                                   "--sampler.batch-size", "1", "--out", str(tmp_path)))
    assert metrics["prior"] == "toyworld-sd" and math.isfinite(metrics["albedo_psnr"]) and "metallic_error" in metrics


def test_dreammat_through_a_22_channel_controlnet_on_a_tiny_sd(tiny_sd: dict, cube_file: Path, tmp_path: Path) -> None:
    controlnet = build_tiny_controlnet(tmp_path / "controlnet22", tiny_sd["sd1"], conditioning_channels=22)
    run, _ = _finished(run_cli("run", "--prior", "sd", "--prior.model", str(tiny_sd["sd1"]), "--prompt", "a red cube",
                               "--guidance", "dreammat", *PBR, "--representation.path", str(cube_file), "--steps", "2", *QUICK,
                               "--prior.controlnet", str(controlnet), "--prior.controlnet-condition", "depth", "normal", "light",
                               "--log.export-formats", "glb", "--out", str(tmp_path / "runs")))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["grad_norm"] > 0 for r in rows)
    assert "light_condition: true" in (run / "config.yaml").read_text()  # switched on for the ControlNet
    _glb_material(run / "export" / "mesh.glb")


def test_light_condition_is_rendered_from_the_mesh() -> None:
    from threedistill.priors.diffusers.controlnet import render_condition

    mesh = Mesh(MeshConfig(material="pbr", init_subdivisions=2, light_condition=True), torch.Generator().manual_seed(0))
    cams = heldout_cameras(2, 32, 32)
    image = render_condition(mesh.render(cams, torch.ones(3)), cams, ("depth", "normal", "light"), 16)
    assert image.shape == (2, 22, 16, 16)
    light = image[:, 4:]
    assert light.amax() > 0.2 and not torch.allclose(light[:, :3], light[:, 15:])  # rough dielectric != rough metal


# ---------------------------------------------------------------------- bad input
def test_pbr_bad_inputs_are_one_line_errors(cube_file: Path, tmp_path: Path) -> None:
    base = ["run", "--prior", "toyworld", "--prompt", "a red cube", "--steps", "1", "--out", str(tmp_path)]
    assert_one_line_error(run_cli(*base, "--material", "pbr"), "--material pbr is a material of an explicit mesh", "--representation mesh")
    assert_one_line_error(run_cli(*base, "--representation", "nerf", "--material", "pbr"), "not of --representation nerf")
    assert_one_line_error(run_cli(*base, "--guidance", "dreammat", "--representation", "mesh"), "--guidance dreammat distils a PBR material",
                          "--material pbr")
    assert_one_line_error(run_cli(*base, "--prior.material", "pbr"), "--prior.material pbr", "--material pbr")
    assert_one_line_error(run_cli(*base, *PBR, "--representation.path", str(cube_file), "--guidance", "dreammat",
                                  "--guidance.early-t", "0.8", "0.2"), "--guidance.early-t must be two fractions")
    assert_one_line_error(run_cli(*base, *PBR, "--representation.path", str(tmp_path / "missing.glb")), "missing.glb")
    proc = run_cli("run", "--prior", "toyworld-video", "--dynamic", "--prompt", "a bouncing ball", *PBR, "--representation.path",
                   str(cube_file), "--steps", "1", "--out", str(tmp_path))
    assert_one_line_error(proc, "a 4D deformation wraps gaussians or nerf, not mesh")
    assert not list(tmp_path.glob("*/*/metrics.json"))
    assert HELDOUT_LIGHT not in TRAINING_LIGHTS


def test_a_pbr_mesh_asks_toyworld_for_pbr_references_whichever_flag_made_it() -> None:
    from threedistill.config import parse_run_args

    for flags in (["--material", "pbr"], ["--representation.material", "pbr"]):
        _, cfg = parse_run_args(["--prior", "toyworld", "--representation", "mesh", *flags])
        assert cfg.prior.material == "pbr"  # type: ignore[attr-defined]
    _, cfg = parse_run_args(["--prior", "toyworld", "--representation", "mesh", "--material", "pbr", "--prior.material", "lambert"])
    assert cfg.prior.material == "lambert"  # type: ignore[attr-defined]  # an explicit choice stays
    _, cfg = parse_run_args(["--prior", "toyworld", "--representation", "mesh"])
    assert cfg.prior.material is None  # type: ignore[attr-defined]


def test_toyworld_mesh_writes_the_catalogue_object_in_each_format(tmp_path: Path) -> None:
    from threedistill.core.mesh_file import load_mesh_file

    toy = resolve_prompt("a red ball")[0]
    for name in ("ball.glb", "ball.obj", "ball.ply"):
        proc = run_cli("toyworld", "mesh", "a red ball", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
        mesh = load_mesh_file(tmp_path / name, "ball")  # z up again, as --representation.path reads it
        assert len(mesh.faces) == len(toy.faces)
        assert np.abs(np.sort(mesh.vertices, 0) - np.sort(toy.vertices, 0)).max() < 1e-5
        assert np.allclose(mesh.face_colors.mean(0), toy.face_colors.mean(0), atol=0.01)
    assert run_cli("toyworld", "mesh", "a red ball", str(tmp_path / "bare.ply"), "--geometry-only").returncode == 0
    assert not np.allclose(load_mesh_file(tmp_path / "bare.ply", "bare").face_colors.mean(0), toy.face_colors.mean(0), atol=0.01)
    assert_one_line_error(run_cli("toyworld", "mesh", "a red ball", str(tmp_path / "ball.stl")), "name a .ply, .obj or .glb file")


@pytest.mark.slow
def test_sds_recovers_the_metal_balls_roughness_and_metallic(tmp_path: Path) -> None:
    """The must-show at a test's budget (32 px, 800 references, 600 steps, ~1 minute): a polished metal
    ball (roughness 0.35, metallic 1) from a grey start (0.5, 0.5); docs/benchmarks.md has the 64 px runs."""
    ball = run_cli("toyworld", "mesh", "a red ball", str(tmp_path / "ball.ply"), "--geometry-only")
    assert ball.returncode == 0, ball.stderr
    _, metrics = _finished(run_cli("run", "--prior", "toyworld", "--prompt", "a red ball", *PBR, "--representation.path",
                                   str(tmp_path / "ball.ply"), "--representation.lr-network", "0.01", "--steps", "600",
                                   "--prior.resolution", "32", "--sampler.width", "32", "--sampler.height", "32",
                                   "--prior.num-references", "800", "--log.no-progress", "--log.preview-every", "0",
                                   "--log.checkpoint-every", "0", "--log.export-formats", "glb", "--out", str(tmp_path / "runs")))
    assert abs(metrics["roughness_mean"] - 0.35) < 0.1, metrics
    assert abs(metrics["metallic_mean"] - 1.0) < 0.15, metrics
    assert metrics["albedo_psnr"] > 18 and metrics["psnr"] > 21, metrics


@pytest.mark.cuda
def test_the_pbr_render_on_cuda_equals_the_cpu_one() -> None:
    mesh = Mesh(MeshConfig(material="pbr", init_subdivisions=3, light_condition=True), torch.Generator().manual_seed(0))
    cams = heldout_cameras(3, 64, 64)
    with torch.no_grad():
        cpu = mesh.render(cams, torch.ones(3))
        gpu = mesh.to("cuda").render(cams.to("cuda"), torch.ones(3, device="cuda"))
    assert (gpu.rgb.cpu() - cpu.rgb).abs().max() < 1e-3 and (gpu.alpha.cpu() - cpu.alpha).abs().max() < 1e-3
    out = mesh.render(cams.to("cuda"), torch.ones(3, device="cuda"))
    out.rgb.mean().backward()
    assert mesh.vertex_logits.grad is not None and mesh.vertex_logits.grad[:, 3:].abs().sum() > 0
    assert out.extras["light_condition"].is_cuda
