"""Video priors: the toyworld video prior (exact posterior over reference clips), the animated
catalogue, and the diffusers text-to-video loader on a tiny random pipeline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from threedistill.core.cameras import OrbitSamplerConfig, heldout_cameras, orbit_cameras
from threedistill.core.errors import UserError
from threedistill.priors.base import VariationalConfig, add_noise
from threedistill.priors.base import PRIORS
from threedistill.priors.toyworld.prior import ReferenceSet
from threedistill.priors.toyworld.animated import (
    BALL_RADIUS, FLOOR_Z, _n_ball_vertices, animated_mesh, animated_prompts, resolve_animated,
)
from threedistill.core.motion import MotionConfig, clips_of, frame_times
from threedistill.priors.toyworld.video import ToyworldVideoConfig, ToyworldVideoPrior
from threedistill.priors.diffusers.video import VideoDiffusionConfig, VideoDiffusionPrior


def _prior(**kw) -> ToyworldVideoPrior:
    return ToyworldVideoPrior(ToyworldVideoConfig(**kw), OrbitSamplerConfig())


def _time_cams(times: list[float], res: int = 16, azimuth: float = 30.0) -> "object":
    n = len(times)
    cams = orbit_cameras(torch.full((n,), 10.0), torch.full((n,), azimuth), torch.full((n,), 2.8), torch.full((n,), 40.0), res, res)
    cams.time = torch.tensor(times)
    return cams


# ---------------------------------------------------------------------- toyworld video prior
@pytest.mark.parametrize("t_value", [30, 400, 900])
@pytest.mark.parametrize("kappa,temperature,sigma", [(0.0, 1.0, 0.0), (5.0, 1.0, 0.0), (5.0, 3.0, 0.3)])
def test_video_denoiser_equals_brute_force_posterior_mean(t_value: int, kappa: float, temperature: float, sigma: float) -> None:
    B, Fr, res, n = 2, 3, 2, 5
    prior = _prior(kappa=kappa, temperature=temperature, data_noise=sigma, resolution=res, frames=Fr)
    g = torch.Generator().manual_seed(0)
    dim = Fr * 3 * res * res
    x = torch.rand(n, dim, generator=g, dtype=torch.float64) * 2 - 1
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    set_id = int(prior.embed(["a bouncing ball"])[0])
    prior._sets[set_id] = ReferenceSet(x=x, sq_norm=(x * x).sum(1), dirs=dirs)
    cams = heldout_cameras(B * Fr, res, res)  # every frame a different camera: only the first counts
    cams.time = frame_times(Fr).repeat(B)
    x_t = torch.randn(B, Fr, 3, res, res, generator=g)
    t = torch.full((B,), t_value)
    emb = torch.full((B,), set_id)
    got = prior.denoise(x_t, t, emb, cams)

    abar = float(prior.alphas_cumprod[t_value])
    a, s = math.sqrt(abar), math.sqrt(1 - abar)
    var = s * s + a * a * sigma * sigma
    cam_dirs = torch.nn.functional.normalize(cams.positions.double(), dim=-1)
    for b in range(B):
        xb = x_t[b].flatten().double()
        logits = []
        for i in range(n):
            d2 = float(((xb - a * x[i]) ** 2).sum())
            logits.append((-d2 / (2 * var) + kappa * float(cam_dirs[b * Fr] @ dirs[i])) / temperature)
        w = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
        mean = sum(w[i] * (x[i] + a * sigma**2 / var * (xb - a * x[i])) for i in range(n))
        torch.testing.assert_close(got[b], mean.float().view(Fr, 3, res, res), atol=1e-5, rtol=1e-5)
    eps = prior.predict_eps(x_t, t, emb, cams)
    torch.testing.assert_close(eps, (x_t - a * got) / s, atol=1e-4, rtol=1e-4)
    # one camera per clip is accepted too; a wrong count is not
    torch.testing.assert_close(prior.denoise(x_t, t, emb, cams[:: Fr]), got)
    with pytest.raises(ValueError, match="view-major"):
        prior.denoise(x_t, t, emb, cams[:4])


def test_reference_clips_are_renders_at_frame_times_and_cached(reference_cache: str) -> None:
    prior = _prior(num_references=4, resolution=16, frames=3)
    set_id = int(prior.embed(["a swinging door"])[0])
    refs = prior.reference_set(set_id)
    assert refs.x.shape == (4, 3 * 3 * 16 * 16)
    assert list((Path(reference_cache) / "toyworld-video").glob("*.pt"))
    cams = clips_of(prior.reference_cameras(4, prior.config.reference_seed + set_id * 7919), 3, MotionConfig())
    torch.testing.assert_close(cams.time, torch.tensor([0.0, 0.5, 1.0]).repeat(4))
    truth = prior.render_ground_truth("a swinging door", cams).rgb.view(4, 3, 3, 16, 16)
    torch.testing.assert_close(refs.x.float().view(4, 3, 3, 16, 16), truth * 2 - 1, atol=2e-3, rtol=0)
    assert not torch.allclose(truth[:, 0], truth[:, 1])  # the door moves within a clip
    torch.testing.assert_close(refs.dirs.float(), cams.directions()[::3])
    again = _prior(num_references=4, resolution=16, frames=3)
    torch.testing.assert_close(again.reference_set(int(again.embed(["a swinging door"])[0])).x, refs.x)


def test_unconditional_set_is_the_union_of_the_animated_prompts() -> None:
    prior = _prior(uncond_references_per_object=1, resolution=8, frames=2)
    n_modes = sum(len(resolve_animated(p)) for p in animated_prompts())
    assert prior.reference_set(int(prior.embed([""])[0])).x.shape == (n_modes, 2 * 3 * 8 * 8)


def test_encode_decode_clips_and_variational_model() -> None:
    prior = _prior(resolution=8, frames=2)
    clips = torch.rand(3, 2, 3, 16, 16)
    x0 = prior.encode(clips)
    assert x0.shape == (3, 2, 3, 8, 8) and prior.decode(x0).shape == (3, 2, 3, 8, 8)
    assert prior.is_video and prior.frames == 2
    vm = prior.variational_model(VariationalConfig(buffer_size=4))
    cams = clips_of(heldout_cameras(3, 8, 8), 2, MotionConfig())
    vm.update(x0, torch.zeros(3, dtype=torch.long), cams, torch.Generator())
    assert len(vm) == 3
    t = torch.full((3,), 500)
    eps = vm.predict_eps(add_noise(prior.alphas_cumprod, x0, torch.randn_like(x0), t), t, torch.zeros(3, dtype=torch.long), cams)
    assert eps.shape == x0.shape and eps.isfinite().all()


def test_ground_truth_is_rendered_at_each_cameras_time() -> None:
    prior = _prior(resolution=16, frames=3)
    cams = _time_cams([0.0, 0.5, 1.0, 0.5])
    out = prior.render_ground_truth("a bouncing ball", cams)
    assert out.rgb.shape == (4, 3, 16, 16) and out.alpha.shape == (4, 1, 16, 16)
    for i, time in enumerate([0.0, 0.5, 1.0, 0.5]):
        single = prior.render_ground_truth(prior.ground_truth_at("a bouncing ball", time), cams[i])
        torch.testing.assert_close(out.rgb[i], single.rgb[0])
    torch.testing.assert_close(out.rgb[0], out.rgb[2])  # the bounce is periodic
    assert not torch.allclose(out.rgb[0], out.rgb[1])
    # the metrics' loop: modes(prompt) -> render_ground_truth(mode, cams)
    torch.testing.assert_close(prior.render_ground_truth(prior.modes("a bouncing ball")[0], cams).rgb, out.rgb)
    cams.time = None
    with pytest.raises(ValueError, match="time"):
        prior.render_ground_truth("a bouncing ball", cams)


# ---------------------------------------------------------------------- animated catalogue
def test_animated_meshes_move_and_stay_in_the_unit_sphere() -> None:
    times = np.linspace(0.0, 1.0, 9)
    for prompt in animated_prompts() + ["a spinning red mug", "a blue bouncing ball"]:
        meshes = [animated_mesh(prompt, t) for t in times]
        for m in meshes:
            assert np.linalg.norm(m.vertices, axis=1).max() < 1.0, prompt
            np.testing.assert_array_equal(m.faces, meshes[0].faces)
            np.testing.assert_array_equal(m.face_colors, meshes[0].face_colors)
        assert not np.allclose(meshes[0].vertices, meshes[2].vertices), prompt
        np.testing.assert_allclose(meshes[0].vertices, meshes[-1].vertices, atol=1e-5)  # t = 0 and 1 coincide
    nb = _n_ball_vertices()
    ball = {t: animated_mesh("a bouncing ball", t).vertices[:nb] for t in (0.0, 0.25, 0.5)}
    assert ball[0.5][:, 2].mean() > ball[0.25][:, 2].mean() > ball[0.0][:, 2].mean()
    assert ball[0.0][:, 2].min() == pytest.approx(FLOOR_Z, abs=1e-3)
    assert np.ptp(ball[0.0][:, 2]) == pytest.approx(2 * BALL_RADIUS, abs=1e-3)
    assert animated_mesh("a blue bouncing ball", 0).face_colors[0].tolist() == pytest.approx([0.15, 0.35, 0.85])
    assert len(resolve_animated("a rotating ball")) == 4


def test_unknown_animated_prompt_is_one_line() -> None:
    with pytest.raises(UserError, match="bouncing ball") as info:
        _prior().embed(["a dancing corgi"])
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="colour word"):
        animated_mesh("a rotating ball", 0.0)


# ---------------------------------------------------------------------- diffusers text-to-video
@pytest.fixture(scope="module")
def tiny_t2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support import build_tiny_t2v

    return build_tiny_t2v(tmp_path_factory.mktemp("tiny-t2v") / "t2v")


@pytest.fixture(scope="module")
def t2v(tiny_t2v: Path) -> VideoDiffusionPrior:
    prior = PRIORS["video-sd"](VideoDiffusionConfig(model=str(tiny_t2v), frames=4, resolution=64), None, "cpu")
    assert isinstance(prior, VideoDiffusionPrior)
    return prior


def test_t2v_loads_encodes_and_predicts(t2v: VideoDiffusionPrior) -> None:
    assert t2v.is_video and t2v.frames == 4 and t2v.resolution == 64 and t2v.model_id.startswith("t2v:")
    clips = torch.rand(2, 4, 3, 32, 32)
    x0 = t2v.encode(clips)
    assert x0.shape == (2, 4, 4, 8, 8)
    per_frame = super(VideoDiffusionPrior, t2v).encode(clips[:, 2])  # frame 2 alone through the image path
    torch.testing.assert_close(x0[:, 2], per_frame, atol=1e-5, rtol=1e-4)
    assert t2v.decode(x0).shape == (2, 4, 3, 64, 64)
    emb = t2v.embed(["a bouncing ball", ""])
    t = torch.tensor([100, 800])
    eps = t2v.predict_eps(add_noise(t2v.alphas_cumprod, x0, torch.randn_like(x0), t), t, emb)
    assert eps.shape == x0.shape and eps.isfinite().all()
    # the UNet sees [B,C,F,h,w]: predict_eps is its output permuted back
    x_t = torch.randn_like(x0)
    direct = t2v.unet(x_t.permute(0, 2, 1, 3, 4), t, encoder_hidden_states=emb).sample.permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(t2v.predict_eps(x_t, t, emb), direct)


def test_t2v_three_sds_steps_move_a_learnable_clip(t2v: VideoDiffusionPrior) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.zeros(1, 4, 3, 64, 64).normal_(generator=g).requires_grad_(True)
    start = logits.detach().clone()
    opt = torch.optim.Adam([logits], lr=0.05)
    emb = t2v.embed(["a bouncing ball", ""])
    for _ in range(3):
        z = t2v.encode(torch.sigmoid(logits))
        t = torch.randint(20, 981, (1,), generator=g)
        noise = torch.randn(z.shape, generator=g)
        x_t = add_noise(t2v.alphas_cumprod, z.detach(), noise, t)
        e = t2v.predict_eps(x_t.repeat(2, 1, 1, 1, 1), t.repeat(2), emb)
        e_cfg = e[1:] + 7.5 * (e[:1] - e[1:])
        grad = torch.nan_to_num((1 - t2v.alphas_cumprod[t]).view(-1, 1, 1, 1, 1) * (e_cfg - noise))
        loss = 0.5 * ((z - (z - grad).detach()) ** 2).sum() / z.shape[0]
        opt.zero_grad()
        loss.backward()
        assert logits.grad is not None and logits.grad.isfinite().all() and logits.grad.abs().sum() > 0
        opt.step()
    assert not torch.allclose(logits.detach(), start)


def test_t2v_offline_errors_are_one_line(tmp_path: Path) -> None:
    cases = [
        ("nonexistent-org/nonexistent-t2v-model", "not in the local Hugging Face cache"),
        (str(tmp_path / "missing"), "does not exist"),
        (str(tmp_path), "no model_index.json"),
    ]
    image_model = tmp_path / "sd"
    image_model.mkdir()
    (image_model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    cases.append((str(image_model), "not a TextToVideoSDPipeline"))
    for model, message in cases:
        with pytest.raises(UserError, match=message) as info:
            VideoDiffusionPrior(VideoDiffusionConfig(model=model), None, "cpu")
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="variational"):
        VideoDiffusionPrior.variational_model(None, VariationalConfig())  # type: ignore[arg-type]


def test_every_mode_is_seen_from_all_around() -> None:
    """Each mode's share of the reference cameras spans the azimuth range (not one sector of it)."""
    prior = _prior()
    cams = prior.reference_cameras(400, 0)
    for share in (cams[:100], cams[300:]):
        assert share.azimuth.min() < -120 and share.azimuth.max() > 120
