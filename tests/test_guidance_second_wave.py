"""BSD, DSD, Perp-Neg and HiFA's options against hand computations on a prior with known epsilon.

The prior's epsilon is per channel: e(x_t; emb)[:, c] = emb[c] + SLOPE x_t[:, c], so embeddings
(3-vectors) give predictions in known, non-parallel directions.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from torch import Tensor

from support import TINY_FLAGS, KnownEpsPrior, assert_one_line_error, run_cli, tiny_kind_flags
from threedistill.cli import main
from threedistill.core.cameras import ViewLabelConfig, orbit_cameras
from threedistill.core.types import TextEmbeddings
from threedistill.guidance.base import perpendicular_component
from threedistill.guidance.bsd import BSDConfig, BSDGuidance, min_norm_weight
from threedistill.guidance.csd import CSDConfig, CSDGuidance, CSMConfig, CSMGuidance
from threedistill.guidance.dsd import DSDConfig, DSDGuidance
from threedistill.guidance.ism import ISMConfig, ISMGuidance
from threedistill.guidance.sds import SDSConfig, SDSGuidance
from threedistill.guidance.vsd import VSDConfig, VSDGuidance
from threedistill.priors.base import VariationalConfig
from threedistill.priors.perp_neg import falloff, perp_neg_weights
from threedistill.priors.prompts import PromptConfig, PromptEmbedder
from threedistill.render.splats import render_splats
from threedistill.representations.base import z_variance_loss

B, SHAPE = 3, (3, 4, 4)
SLOPE = 0.5
COND, UNCOND, NULL = [2.0, -1.0, 0.5], [-1.0, 0.3, 0.2], [0.5, 0.5, 0.5]
NEG_A, NEG_B = [1.0, 2.0, -3.0], [0.0, -2.0, 1.0]
IMAGES = torch.rand((B,) + SHAPE, generator=torch.Generator().manual_seed(3))


class ChannelEpsPrior(KnownEpsPrior):
    """e(x_t; emb) = emb broadcast over channels + SLOPE x_t (embeddings [N,3])."""

    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras=None) -> Tensor:
        self.calls += 1
        return emb.view(-1, 3, *([1] * (x_t.ndim - 2))).to(x_t) + self.slope * x_t


class ChannelVariational:
    """e_phi(x_t) = (3, 1, -1) + SLOPE x_t."""

    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras) -> Tensor:
        return torch.tensor([3.0, 1.0, -1.0]).view(1, 3, 1, 1) + SLOPE * x_t

    def update(self, x0, emb, cameras, generator) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PriorWithVariational(ChannelEpsPrior):
    def variational_model(self, config: VariationalConfig) -> ChannelVariational:
        return ChannelVariational()


def _rows(v: list[float]) -> Tensor:
    return torch.tensor(v).expand(B, 3).clone()


def _emb(weights: "Tensor | None" = None) -> TextEmbeddings:
    emb = TextEmbeddings(cond=_rows(COND), uncond=_rows(UNCOND), null=_rows(NULL))
    if weights is not None:
        emb.negatives = torch.stack([_rows(NEG_A), _rows(NEG_B)], dim=1)
        emb.negative_weights = weights
    return emb


def _eps(v: list[float], x: Tensor) -> Tensor:
    return torch.tensor(v).view(1, 3, 1, 1) + SLOPE * x


def _cams():
    one = torch.ones(B)
    return orbit_cameras(one * 10, torch.tensor([0.0, 90.0, 180.0]), one * 2.8, one * 40, 8, 8)


def _grad_of(guidance, images: Tensor, emb: TextEmbeddings, step: int = 1) -> Tensor:
    images = images.clone().requires_grad_(True)
    guidance(images, _cams(), emb, step).loss.backward()
    return images.grad


def _abar(prior, t: Tensor) -> Tensor:
    return prior.alphas_cumprod[t].view(B, 1, 1, 1)


# ---------------------------------------------------------------- BSD
def test_bsd_mixing_weight_at_both_extremes() -> None:
    d = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(min_norm_weight(torch.zeros_like(d), d).flatten(), torch.ones(2))  # c = 0 is the min-norm point
    assert torch.equal(min_norm_weight(d, torch.zeros_like(d)).flatten(), torch.zeros(2))  # d = 0 is
    assert torch.equal(min_norm_weight(d, 3 * d).flatten(), torch.ones(2))  # c shorter, same direction: all c
    assert torch.equal(min_norm_weight(3 * d, d).flatten(), torch.zeros(2))


def test_bsd_min_norm_property() -> None:
    g = torch.Generator().manual_seed(1)
    c, d = torch.randn(16, 3, 4, 4, generator=g), 0.5 + torch.randn(16, 3, 4, 4, generator=g)
    a = min_norm_weight(c, d)
    mixed = (a * c + (1 - a) * d).flatten(1).norm(dim=1)
    assert bool((mixed <= torch.minimum(c.flatten(1).norm(dim=1), d.flatten(1).norm(dim=1)) + 1e-5).all())
    grid = torch.linspace(0, 1, 201).view(-1, 1, 1, 1, 1)
    best = (grid * c + (1 - grid) * d).flatten(2).norm(dim=2).min(dim=0).values
    assert bool((mixed <= best + 1e-5).all())


@pytest.mark.parametrize("auto", [False, True])
def test_bsd_gradient(auto: bool) -> None:
    prior = ChannelEpsPrior(slope=SLOPE)
    guidance = BSDGuidance(BSDConfig(auto=auto), prior, 10, torch.Generator().manual_seed(4))
    grad = _grad_of(guidance, IMAGES, _emb())
    lo, hi = guidance.step_range(1)
    assert (lo, hi) == (20, 820)  # t_max 980 -> 500 over the first 30% of the run
    g = torch.Generator().manual_seed(4)
    t = torch.randint(lo, hi + 1, (B,), generator=g)
    noise = torch.randn((B,) + SHAPE, generator=g) + 0.1 * torch.randn(B, 3, 1, 1, generator=g)
    a = _abar(prior, t)
    x_t = a.sqrt() * IMAGES + (1 - a).sqrt() * noise
    e_y, e_u = _eps(COND, x_t), _eps(UNCOND, x_t)
    if auto:
        c, d = e_y - e_u, 1.25 * (e_u - noise)
        w = (e_u - noise).flatten(1).norm(dim=1).view(B, 1, 1, 1) * (1 - a).sqrt() / 50
    else:
        c, d = 15 * (e_y - e_u), e_u
        w = a.sqrt()
    mix = ((d - c) * d).flatten(1).sum(1) / ((d - c) ** 2).flatten(1).sum(1)
    mix = mix.clamp(0, 1).view(B, 1, 1, 1)
    torch.testing.assert_close(grad, 0.1 * w * (mix * c + (1 - mix) * d) / B, atol=1e-5, rtol=1e-4)
    assert prior.calls == 1  # cond and negative in one batched call


# ---------------------------------------------------------------- DSD
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_dsd_with_vsd_weights_equals_vsd(scale: float) -> None:
    vsd = VSDGuidance(VSDConfig(cfg_scale=scale), PriorWithVariational(slope=SLOPE), 10, torch.Generator().manual_seed(2))
    dsd = DSDGuidance(DSDConfig(cfg_scale=scale, variational_weight=1.0), PriorWithVariational(slope=SLOPE), 10,
                      torch.Generator().manual_seed(2))
    for step in (1, 2, 7):
        torch.testing.assert_close(_grad_of(dsd, IMAGES, _emb(), step), _grad_of(vsd, IMAGES, _emb(), step), atol=1e-6, rtol=1e-5)


def test_dsd_weights_each_part_by_its_schedule() -> None:
    prior = PriorWithVariational(slope=SLOPE)
    cfg = DSDConfig(cfg_scale=4.0, classifier_weight=[(0.0, 2.0), (1.0, 6.0)], min_step=100, max_step=900)
    dsd = DSDGuidance(cfg, prior, 10, torch.Generator().manual_seed(6))
    assert dsd.part_weights(0) == (2.0, 0.0) and dsd.part_weights(10) == (6.0, 1.0)
    assert dsd.part_weights(1) == pytest.approx((2.4, 0.5))  # l_v ramps 0 -> 1 over the first 20% by default
    grad = _grad_of(dsd, IMAGES, _emb(), 1)
    g = torch.Generator().manual_seed(6)
    t = torch.randint(100, 901, (B,), generator=g)
    noise = torch.randn((B,) + SHAPE, generator=g)
    a = _abar(prior, t)
    x_t = a.sqrt() * IMAGES + (1 - a).sqrt() * noise
    e_y, e_u, e_phi = _eps(COND, x_t), _eps(UNCOND, x_t), _eps([3.0, 1.0, -1.0], x_t)
    torch.testing.assert_close(grad, (1 - a) * (2.4 * (e_y - e_u) + 0.5 * (e_u - e_phi)) / B, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- Perp-Neg
def test_perp_neg_with_zero_negative_weights_equals_plain_cfg() -> None:
    plain = SDSGuidance(SDSConfig(cfg_scale=7.5), ChannelEpsPrior(slope=SLOPE), 10, torch.Generator().manual_seed(5))
    prior = ChannelEpsPrior(slope=SLOPE)
    perp = SDSGuidance(SDSConfig(cfg_scale=7.5), prior, 10, torch.Generator().manual_seed(5))
    torch.testing.assert_close(_grad_of(perp, IMAGES, _emb(torch.zeros(B, 2))), _grad_of(plain, IMAGES, _emb()), atol=1e-6, rtol=1e-5)
    assert prior.calls == 1  # cond, uncond and both negatives in one batched prior call


def test_perp_neg_negatives_are_orthogonal_to_the_positive_direction() -> None:
    prior = ChannelEpsPrior(slope=SLOPE)
    guidance = SDSGuidance(SDSConfig(cfg_scale=7.5), prior, 10, torch.Generator())
    x_t = torch.randn((B,) + SHAPE, generator=torch.Generator().manual_seed(9))
    t = torch.full((B,), 500)
    weights = torch.tensor([[-2.0, -1.0], [-0.5, 0.0], [1.0, -3.0]])
    e_u, delta = guidance.guidance_delta(x_t, t, _emb(weights), None)
    e_pos = _eps(COND, x_t) - _eps(UNCOND, x_t)
    torch.testing.assert_close(e_u, _eps(UNCOND, x_t))
    push = (delta - e_pos).flatten(1)
    assert push.abs().max() > 0.1  # the negatives do move the direction ...
    torch.testing.assert_close((push * e_pos.flatten(1)).sum(1), torch.zeros(B), atol=1e-4, rtol=0)  # ... but not along e_pos
    e_negs = [_eps(v, x_t) - _eps(UNCOND, x_t) for v in (NEG_A, NEG_B)]
    expected = e_pos + sum(weights[:, i].view(B, 1, 1, 1) * perpendicular_component(e_negs[i], e_pos) for i in range(2))
    torch.testing.assert_close(delta, expected)


def test_perp_neg_view_weights_follow_threestudio() -> None:
    one = torch.ones(4)
    cams = orbit_cameras(torch.tensor([10.0, 10.0, 10.0, 80.0]), torch.tensor([0.0, 45.0, 135.0, 30.0]), one * 2.8, one * 40, 8, 8)
    f_fs, f_sf, f_sb, f_fsb = (4.0, 0.5, -2.426), (4.0, 0.5, -2.426), (1.0, 0.5, -0.606), (1.0, 0.5, 0.967)
    pos, idx, w = perp_neg_weights(cams, ViewLabelConfig(), f_fs, f_sf, f_sb, f_fsb)
    # VIEW_LABELS order: front, side, back, overhead
    torch.testing.assert_close(pos[0], torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(pos[1], torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(pos[2], torch.tensor([0.0, 0.5, 0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(pos[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64))
    assert idx[:3].tolist() == [[0, 1], [0, 1], [1, 0]]
    r = torch.tensor(0.5, dtype=torch.float64)
    torch.testing.assert_close(w[0], torch.stack([-falloff(f_fs, r * 2), -falloff(f_sf, r * 0)]))
    torch.testing.assert_close(w[2], torch.stack([-falloff(f_sb, r), -falloff(f_fsb, r)]))
    assert w[3].tolist() == [0.0, 0.0]  # overhead: no negatives
    assert float(falloff((4.0, 0.5, -2.426), torch.tensor(1.0))) == pytest.approx(4 * math.exp(-0.5) - 2.426, abs=1e-6)


def test_prompt_embedder_hands_out_perp_neg_embeddings() -> None:
    prior = KnownEpsPrior()  # embeddings: the text's length, a float per text
    embedder = PromptEmbedder(prior, "a cube", config=PromptConfig(perp_neg=True))
    one = torch.ones(2)
    cams = orbit_cameras(torch.tensor([10.0, 80.0]), torch.tensor([45.0, 0.0]), one * 2.8, one * 40, 8, 8)
    emb = embedder.for_cameras(cams)
    front, side = float(len("a cube, front view")), float(len("a cube, side view"))
    assert emb.cond[0].item() == pytest.approx(0.5 * front + 0.5 * side)
    assert emb.cond[1].item() == float(len("a cube, overhead view"))
    assert emb.negatives is not None and emb.negative_weights is not None
    assert emb.negatives[0].tolist() == [front, side]
    assert emb.negatives[1].tolist() == [0.0, 0.0]  # overhead: placeholder rows of the (empty) negative prompt
    assert emb.negative_weights[1].tolist() == [0.0, 0.0]
    assert emb.index(torch.tensor([1])).negatives.shape == (1, 2)
    assert emb.repeat(2).negative_weights.shape == (4, 2)


# ---------------------------------------------------------------- HiFA
def test_hifa_image_term_against_a_hand_computed_value() -> None:
    prior = ChannelEpsPrior(slope=SLOPE)  # encode = decode = identity
    cfg = SDSConfig(cfg_scale=3.0, min_step=100, max_step=900, image_term_weight=0.01)
    grad = _grad_of(SDSGuidance(cfg, prior, 10, torch.Generator().manual_seed(7)), IMAGES, _emb())
    g = torch.Generator().manual_seed(7)
    t = torch.randint(100, 901, (B,), generator=g)
    noise = torch.randn((B,) + SHAPE, generator=g)
    a = _abar(prior, t)
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    x_t = alpha * IMAGES + sigma * noise
    e_hat = _eps(UNCOND, x_t) + 3.0 * (_eps(COND, x_t) - _eps(UNCOND, x_t))
    x0_hat = (x_t - sigma * e_hat) / alpha
    latent = (1 - a) * (e_hat - noise)
    image = 0.01 * (1 - a) * alpha / sigma * (IMAGES - x0_hat)
    torch.testing.assert_close(grad, (latent + image) / B, atol=1e-5, rtol=1e-4)
    # the image term alone is the reparameterised L2 form of SDS (StableDreamer): w (alpha / sigma) (x - x0_hat) = w (e_hat - eps)
    torch.testing.assert_close(image / 0.01, latent, atol=1e-4, rtol=1e-4)


def test_hifa_sqrt_anneal_is_deterministic() -> None:
    cfg = SDSConfig(min_step=300, max_step=980, sqrt_anneal=True)
    guidance = SDSGuidance(cfg, ChannelEpsPrior(), 100, torch.Generator())
    for step, expected in ((0, 980), (25, round(300 + 680 * 0.5)), (100, 300)):
        assert guidance.sample_timesteps(B, step, torch.device("cpu")).tolist() == [expected] * B


# ---------------------------------------------------------------- end to end on toyworld
@pytest.mark.parametrize("objective,flags", [
    ("bsd", []),
    ("bsd", ["--guidance.auto", "--prompts.perp-neg"]),
    ("dsd", ["--prompts.perp-neg"]),
    ("sds", ["--prompts.perp-neg", "--guidance.image-term-weight", "0.01", "--guidance.sqrt-anneal", "--log.x0-previews"]),
])
def test_new_objectives_and_options_run_on_toyworld(objective: str, flags: list[str], tmp_path) -> None:
    assert main(["run", *TINY_FLAGS, "--guidance", objective, *flags, "--out", str(tmp_path)]) == 0
    (metrics,) = tmp_path.rglob("metrics.json")
    (preview,) = metrics.parent.glob("previews/step-000003.png")
    rows = 2 if "--log.x0-previews" in flags else 1  # renders, then their x0 estimates
    assert Image.open(preview).size[1] == rows * 32 + (rows + 1) * 2


@pytest.mark.parametrize("flags,needle", [
    (["--guidance", "csd", "--prompts.perp-neg"], "--prompts.perp-neg needs an objective whose guidance is CFG-shaped"),
    (["--guidance", "bsd", "--guidance.offset-noise", "-0.1"], "--guidance.offset-noise -0.1 is out of range"),
    (["--guidance.image-term-weight", "-1"], "--guidance.image-term-weight -1.0 is out of range"),
])
def test_bad_second_wave_settings_are_refused_in_one_line(flags: list[str], needle: str, tmp_path) -> None:
    proc = run_cli("run", *TINY_FLAGS, *flags, "--out", str(tmp_path))
    assert proc.returncode == 2
    assert_one_line_error(proc, needle)
    assert not any(tmp_path.rglob("*"))


def test_z_variance_among_the_splats_a_pixel_composites() -> None:
    cams = orbit_cameras(torch.zeros(1), torch.zeros(1), torch.full((1,), 3.0), torch.full((1,), 40.0), 16, 16)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(2, 1)
    scales = torch.full((2, 3), 0.4)
    colors = torch.ones(2, 3)
    white = torch.ones(3)

    def render(means: Tensor, opacities: Tensor):
        return render_splats(means, quats, scales, opacities, colors, cams, white, backend="torch", depth_moments=True)

    one = render(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), torch.tensor([0.9, 0.0]))
    centre = one.extras["depth_sq"][0, 0, 8, 8] / one.alpha[0, 0, 8, 8]
    torch.testing.assert_close(centre, (one.depth[0, 0, 8, 8] / one.alpha[0, 0, 8, 8]) ** 2)  # one depth: no variance
    assert float(z_variance_loss(one)) < 1e-6
    means = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    means[1] = cams.positions[0] * 0.2  # the second splat 0.6 units nearer the camera
    two = render(means, torch.tensor([0.6, 0.6]))
    assert float(z_variance_loss(two)) > 0.01
    assert "depth_sq" not in render_splats(means, quats, scales, torch.tensor([0.6, 0.6]), colors, cams, white, backend="torch").extras


@pytest.mark.parametrize("kind", ["gaussians", "nerf"])
def test_z_variance_regulariser_runs_on_each_representation(kind: str, tmp_path) -> None:
    flags = TINY_FLAGS if kind == "gaussians" else tiny_kind_flags("nerf")
    assert main(["run", *flags, "--representation.lambda-z-variance", "100", "--out", str(tmp_path)]) == 0
    (log,) = tmp_path.rglob("metrics.jsonl")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r for r in rows if "step" in r and "loss" in r]
    assert len(steps) == 6 and all(r["loss_z_variance"] >= 0 for r in steps), rows[:2]


def test_every_objective_hands_over_an_x0_preview() -> None:
    made = [(SDSGuidance, SDSConfig()), (BSDGuidance, BSDConfig()), (DSDGuidance, DSDConfig()), (VSDGuidance, VSDConfig()),
            (CSDGuidance, CSDConfig()), (CSMGuidance, CSMConfig()), (ISMGuidance, ISMConfig())]
    for cls, cfg in made:
        out = cls(cfg, PriorWithVariational(slope=SLOPE), 10, torch.Generator().manual_seed(0))(IMAGES.clone(), _cams(), _emb(), 1)
        assert out.preview is not None, cls.__name__
        assert out.preview().shape == IMAGES.shape
