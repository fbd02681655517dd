import math

import pytest
import torch

from support import KnownEpsPrior
from threedistill.guidance.base import reparameterised_loss, weighting
from threedistill.guidance.sds import SDSConfig, SDSGuidance
from threedistill.core.types import TextEmbeddings
from threedistill.priors.base import add_noise


def _emb(B: int, cond: float, uncond: float) -> TextEmbeddings:
    return TextEmbeddings(cond=torch.full((B,), cond), uncond=torch.full((B,), uncond), null=torch.zeros(B))


def _draws(seed: int, B: int, shape: tuple, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(lo, hi + 1, (B,), generator=g)
    noise = torch.randn((B,) + shape, generator=g)
    return t, noise


@pytest.mark.parametrize("scale", [1.0, 7.5])
@pytest.mark.parametrize("weight", ["sds", "uniform", "fantasia3d"])
def test_sds_gradient_matches_hand_computation(scale: float, weight: str) -> None:
    B, shape = 3, (3, 4, 4)
    prior = KnownEpsPrior(slope=0.5)
    cfg = SDSConfig(cfg_scale=scale, min_step=100, max_step=900, weighting=weight)
    guidance = SDSGuidance(cfg, prior, total_steps=10, generator=torch.Generator().manual_seed(7))
    images = torch.rand((B,) + shape, requires_grad=True)
    out = guidance(images, None, _emb(B, 2.0, -1.0), step=1)
    out.loss.backward()

    t, noise = _draws(7, B, shape, 100, 900)
    abar = prior.alphas_cumprod[t].view(B, 1, 1, 1)
    x_t = abar.sqrt() * images.detach() + (1 - abar).sqrt() * noise
    e_c, e_u = 2.0 + 0.5 * x_t, -1.0 + 0.5 * x_t
    e_hat = e_u + scale * (e_c - e_u)
    w = {"sds": 1 - abar, "uniform": torch.ones_like(abar), "fantasia3d": abar.sqrt() * (1 - abar)}[weight]
    expected = w * (e_hat - noise) / B
    torch.testing.assert_close(images.grad, expected, atol=1e-5, rtol=1e-4)
    # one prior call per evaluation, cond and uncond batched together
    assert prior.calls == 1


def test_cfg_scale_one_skips_the_unconditional_branch() -> None:
    prior = KnownEpsPrior()
    guidance = SDSGuidance(SDSConfig(cfg_scale=1.0), prior, 10, torch.Generator().manual_seed(0))
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    guidance(x, None, _emb(2, 1.0, 100.0), 1).loss.backward()
    assert prior.calls == 1
    assert x.grad.abs().max() < 10  # the huge uncond value never entered


def test_reparameterised_loss_gradient_is_grad_over_batch() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    g = torch.randn(4, 3)
    reparameterised_loss(x, g).backward()
    torch.testing.assert_close(x.grad, g / 4)


def test_nan_to_num_runs_before_clipping() -> None:
    x = torch.zeros(2, 3, requires_grad=True)
    g = torch.tensor([[float("nan"), 5.0, -5.0], [float("inf"), 0.5, -0.5]])
    reparameterised_loss(x, g, clip=1.0).backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 1.0, -1.0], [0.0, 0.5, -0.5]]) / 2)


def test_timesteps_follow_annealed_schedule() -> None:
    prior = KnownEpsPrior()
    cfg = SDSConfig(min_step=20, max_step=[(0, 980), (0.5, 500)])
    guidance = SDSGuidance(cfg, prior, total_steps=100, generator=torch.Generator().manual_seed(0))
    assert guidance.step_range(0) == (20, 980)
    assert guidance.step_range(25) == (20, 740)
    assert guidance.step_range(80) == (20, 500)
    t = guidance.sample_timesteps(1000, 80, torch.device("cpu"))
    assert t.min() >= 20 and t.max() <= 500


def test_prior_defaults_apply_when_unset() -> None:
    from threedistill.priors.base import GuidanceDefaults

    prior = KnownEpsPrior(defaults=GuidanceDefaults(cfg_scale=3.0, min_step=50, max_step=600))
    guidance = SDSGuidance(SDSConfig(), prior, 10, torch.Generator())
    assert guidance.cfg_scale == 3.0 and guidance.step_range(0) == (50, 600)
    guidance = SDSGuidance(SDSConfig(cfg_scale=9.0, max_step=700), prior, 10, torch.Generator())
    assert guidance.cfg_scale == 9.0 and guidance.step_range(0) == (50, 700)


def test_weightings() -> None:
    ac = torch.tensor([0.25, 0.81])
    t = torch.tensor([0, 1])
    torch.testing.assert_close(weighting("sds", ac, t), torch.tensor([0.75, 0.19]))
    torch.testing.assert_close(weighting("fantasia3d", ac, t), torch.tensor([0.5 * 0.75, 0.9 * 0.19]))
    torch.testing.assert_close(weighting("lucid", ac, t), torch.tensor([math.sqrt(3.0), math.sqrt(0.19 / 0.81)]))


def test_add_noise() -> None:
    ac = torch.tensor([0.64])
    x = add_noise(ac, torch.ones(1, 2), torch.full((1, 2), 2.0), torch.tensor([0]))
    torch.testing.assert_close(x, torch.full((1, 2), 0.8 + 0.6 * 2.0))


class AffineDecodePrior(KnownEpsPrior):
    """decode(z) = 0.5 z + 0.25, so the image-space target is known in closed form."""

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return 0.5 * x0 + 0.25


@pytest.mark.parametrize("image_space", [False, True])
def test_image_space_loss_pulls_renders_toward_the_decoded_target(image_space: bool) -> None:
    B, shape = 2, (3, 4, 4)
    prior = AffineDecodePrior(slope=0.5)
    cfg = SDSConfig(cfg_scale=1.0, min_step=100, max_step=900, image_space=image_space)
    guidance = SDSGuidance(cfg, prior, total_steps=10, generator=torch.Generator().manual_seed(3))
    images = torch.rand((B,) + shape, requires_grad=True)
    guidance(images, None, _emb(B, 2.0, -1.0), step=1).loss.backward()

    t, noise = _draws(3, B, shape, 100, 900)
    abar = prior.alphas_cumprod[t].view(B, 1, 1, 1)
    x_t = abar.sqrt() * images.detach() + (1 - abar).sqrt() * noise
    g = (1 - abar) * (2.0 + 0.5 * x_t - noise)
    x = images.detach()
    expected = (x - (0.5 * (x - g) + 0.25)) / B if image_space else g / B
    torch.testing.assert_close(images.grad, expected, atol=1e-5, rtol=1e-4)
