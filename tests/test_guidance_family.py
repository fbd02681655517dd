"""Each objective's gradient against a hand computation on a prior with known epsilon."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from torch import Tensor

from support import KnownEpsPrior
from threedistill.core.cameras import orbit_cameras
from threedistill.guidance.base import pixelwise_clip
from threedistill.guidance.csd import CSDConfig, CSDGuidance, CSMConfig, CSMGuidance
from threedistill.guidance.dds import DDSConfig, DDSGuidance
from threedistill.guidance.ism import ISMConfig, ISMGuidance, TSMConfig, TSMGuidance
from threedistill.guidance.sds import SDSConfig, SDSGuidance
from threedistill.guidance.vsd import ESDConfig, VSDConfig, VSDGuidance
from threedistill.core.types import TextEmbeddings
from threedistill.priors.base import VariationalConfig, ddim_step

B, SHAPE = 3, (3, 4, 4)
SLOPE = 0.5


class KnownVariational:
    """e_var(x_t, c) = 3 + SLOPE x_t with cameras, -2 + SLOPE x_t without; counts updates."""

    def __init__(self) -> None:
        self.updates = 0

    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras) -> Tensor:
        return (3.0 if cameras is not None else -2.0) + SLOPE * x_t

    def update(self, x0, emb, cameras, generator) -> dict[str, float]:
        self.updates += 1
        return {}

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]


class PriorWithVariational(KnownEpsPrior):
    def variational_model(self, config: VariationalConfig) -> KnownVariational:
        self.variational = KnownVariational()
        return self.variational


def _emb(cond: float = 2.0, uncond: float = -1.0, null: float = 0.5) -> TextEmbeddings:
    return TextEmbeddings(cond=torch.full((B,), cond), uncond=torch.full((B,), uncond), null=torch.full((B,), null))


def _cams():
    one = torch.ones(B)
    return orbit_cameras(one * 10, torch.tensor([0.0, 90.0, 180.0]), one * 2.8, one * 40, 8, 8)


def _eps(value: float, x: Tensor) -> Tensor:
    return value + SLOPE * x


def _grad_of(guidance, images: Tensor, *args) -> Tensor:
    images = images.clone().requires_grad_(True)
    guidance(images, *args).loss.backward()
    return images.grad


def _t_and_noise(seed: int, lo: int, hi: int, noise: bool = True) -> tuple[Tensor, Optional[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(lo, hi + 1, (B,), generator=g)
    return t, (torch.randn((B,) + SHAPE, generator=g) if noise else None)


def _abar(prior, t: Tensor) -> Tensor:
    return prior.alphas_cumprod[t].view(B, 1, 1, 1)


IMAGES = torch.rand((B,) + SHAPE, generator=torch.Generator().manual_seed(3))


# ---------------------------------------------------------------- VSD / ESD
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_vsd_esd_gradient(lam: float) -> None:
    prior = PriorWithVariational(slope=SLOPE)
    cfg = ESDConfig(cfg_scale=4.0, min_step=100, max_step=900, entropy_weight=lam)
    guidance = VSDGuidance(cfg, prior, 10, torch.Generator().manual_seed(5))
    grad = _grad_of(guidance, IMAGES, _cams(), _emb(), 1)
    t, noise = _t_and_noise(5, 100, 900)
    a = _abar(prior, t)
    x_t = a.sqrt() * IMAGES + (1 - a).sqrt() * noise
    e_pre = _eps(-1, x_t) + 4.0 * (_eps(2, x_t) - _eps(-1, x_t))
    e_phi = lam * _eps(-2, x_t) + (1 - lam) * _eps(3, x_t)
    torch.testing.assert_close(grad, (1 - a) * (e_pre - e_phi) / B, atol=1e-5, rtol=1e-4)
    assert prior.variational.updates == 1  # trained once (before predicting, on the first step)
    guidance(IMAGES.clone().requires_grad_(True), _cams(), _emb(), 2)
    assert prior.variational.updates == 2


def test_esd_with_lambda_zero_equals_vsd() -> None:
    prior = PriorWithVariational(slope=SLOPE)
    vsd = VSDGuidance(VSDConfig(cfg_scale=2.0), prior, 10, torch.Generator().manual_seed(1))
    esd = VSDGuidance(ESDConfig(cfg_scale=2.0, entropy_weight=0.0), prior, 10, torch.Generator().manual_seed(1))
    for step in (1, 2):
        assert torch.equal(_grad_of(vsd, IMAGES, _cams(), _emb(), step), _grad_of(esd, IMAGES, _cams(), _emb(), step))


def test_vsd_state_round_trip() -> None:
    prior = PriorWithVariational(slope=SLOPE)
    guidance = VSDGuidance(VSDConfig(), prior, 10, torch.Generator())
    guidance(IMAGES.clone().requires_grad_(True), _cams(), _emb(), 1)
    again = VSDGuidance(VSDConfig(), prior, 10, torch.Generator())
    again.load_state_dict(guidance.state_dict())
    assert again._trained and prior.variational.updates == 1


# ---------------------------------------------------------------- ISM / TSM
def _reference_inversion(prior, x0: Tensor, s: Tensor, stride: int) -> Tensor:
    """DDIM inversion written out with the textbook formulas, one row at a time."""
    rows = []
    ab = prior.alphas_cumprod
    for i in range(B):
        x, cur = x0[i], 0
        while cur < int(s[i]):
            nxt = min(cur + stride, int(s[i]))
            e = 0.5 + SLOPE * x  # null embedding 0.5
            x0_hat = (x - (1 - ab[cur]).sqrt() * e) / ab[cur].sqrt()
            x = ab[nxt].sqrt() * x0_hat + (1 - ab[nxt]).sqrt() * e
            cur = nxt
        rows.append(x)
    return torch.stack(rows)


def _ism_expected(prior, t: Tensor, delta: int, stride: int, gamma: Optional[float], cfg: float) -> Tensor:
    ab = prior.alphas_cumprod
    s = (t - delta).clamp_min(0)
    x_s = _reference_inversion(prior, IMAGES, s, stride)
    e_s = _eps(0.5, x_s)
    shape = (B, 1, 1, 1)
    step_to = lambda target: ab[target].sqrt().view(shape) * (x_s - (1 - ab[s]).sqrt().view(shape) * e_s) / ab[s].sqrt().view(shape) + (1 - ab[target]).sqrt().view(shape) * e_s  # noqa: E731
    x_t = step_to(t)
    if gamma is None:
        target = e_s
    else:
        mu = torch.round(s + (t - s).double() * (1 - gamma**2) ** 0.5).long()
        target = _eps(0.5, step_to(mu))
    e_cfg = _eps(-1, x_t) + cfg * (_eps(2, x_t) - _eps(-1, x_t))
    w = ((1 - ab[t]) / ab[t]).sqrt().view(shape)
    return w * (e_cfg - target) / B


@pytest.mark.parametrize("gamma", [None, 0.3, 0.0])
def test_ism_tsm_gradient(gamma: Optional[float]) -> None:
    prior = KnownEpsPrior(slope=SLOPE)
    common = dict(cfg_scale=3.0, min_step=20, max_step=980, delta_t=80.0, inversion_stride=200)
    if gamma is None:
        guidance = ISMGuidance(ISMConfig(**common), prior, 10, torch.Generator().manual_seed(2))
    else:
        guidance = TSMGuidance(TSMConfig(**common, gamma=gamma), prior, 10, torch.Generator().manual_seed(2))
    grad = _grad_of(guidance, IMAGES, _cams(), _emb(), 1)
    t, _ = _t_and_noise(2, 20, 980, noise=False)
    torch.testing.assert_close(grad, _ism_expected(prior, t, 80, 200, gamma, 3.0), atol=1e-4, rtol=1e-4)


def test_tsm_with_gamma_one_equals_ism_exactly() -> None:
    prior = KnownEpsPrior(slope=SLOPE)
    ism = ISMGuidance(ISMConfig(cfg_scale=2.0), prior, 100, torch.Generator().manual_seed(4))
    tsm = TSMGuidance(TSMConfig(cfg_scale=2.0, gamma=1.0), prior, 100, torch.Generator().manual_seed(4))
    for step in (1, 50, 90):
        assert torch.equal(_grad_of(ism, IMAGES, _cams(), _emb(), step), _grad_of(tsm, IMAGES, _cams(), _emb(), step))


def test_ism_prior_calls_follow_the_inversion_length() -> None:
    prior = KnownEpsPrior(slope=SLOPE)
    guidance = ISMGuidance(ISMConfig(cfg_scale=2.0, min_step=900, max_step=900, delta_t=100.0), prior, 10, torch.Generator())
    guidance(IMAGES.clone().requires_grad_(True), _cams(), _emb(), 1)
    assert prior.calls == 4 + 1 + 1  # ceil(800 / 200) inversion steps, e(x_s, s), one batched CFG call


# ---------------------------------------------------------------- CSD / CSM
def test_csd_default_gradient() -> None:
    prior = KnownEpsPrior(slope=SLOPE)
    guidance = CSDGuidance(CSDConfig(min_step=20, max_step=980), prior, 10, torch.Generator().manual_seed(6))
    grad = _grad_of(guidance, IMAGES, _cams(), _emb(), 1)
    t, noise = _t_and_noise(6, 20, 980)
    a = _abar(prior, t)
    x_t = a.sqrt() * IMAGES + (1 - a).sqrt() * noise
    torch.testing.assert_close(grad, (1 - a) * (_eps(2, x_t) - _eps(0.5, x_t)) / B, atol=1e-5, rtol=1e-4)
    assert prior.calls == 1  # cond and null in one batched call


@pytest.mark.parametrize("scale", [1.0, 2.0, 7.5])
def test_csd_with_sds_coefficients_equals_sds(scale: float) -> None:
    """(a_c, a_u, a_n, a_eps) = (s, 1 - s, 0, -1) is SDS with CFG s: s e_c + (1 - s) e_u - eps."""
    prior = KnownEpsPrior(slope=SLOPE)
    csd = CSDGuidance(CSDConfig(cond_scale=scale, uncond_scale=1 - scale, null_scale=0.0, noise_scale=-1.0), prior, 10, torch.Generator().manual_seed(8))
    sds = SDSGuidance(SDSConfig(cfg_scale=scale), prior, 10, torch.Generator().manual_seed(8))
    torch.testing.assert_close(_grad_of(csd, IMAGES, _cams(), _emb(), 1), _grad_of(sds, IMAGES, _cams(), _emb(), 1), atol=1e-6, rtol=1e-5)


def test_csd_coefficient_schedules() -> None:
    prior = KnownEpsPrior(slope=SLOPE)
    cfg = CSDConfig(uncond_scale=[(0, 0.0), (1.0, -1.0)], null_scale=[(0, -1.0), (1.0, 0.0)])
    guidance = CSDGuidance(cfg, prior, 100, torch.Generator().manual_seed(9))
    grad = _grad_of(guidance, IMAGES, _cams(), _emb(), 100)  # at the end: e_c - e_neg
    t, noise = _t_and_noise(9, 20, 980)
    a = _abar(prior, t)
    x_t = a.sqrt() * IMAGES + (1 - a).sqrt() * noise
    torch.testing.assert_close(grad, (1 - a) * (_eps(2, x_t) - _eps(-1, x_t)) / B, atol=1e-5, rtol=1e-4)


def test_csm_gradient() -> None:
    prior = KnownEpsPrior(slope=SLOPE)
    guidance = CSMGuidance(CSMConfig(cfg_scale=3.0, min_step=20, max_step=980), prior, 10, torch.Generator().manual_seed(11))
    grad = _grad_of(guidance, IMAGES, _cams(), _emb(), 1)
    t, _ = _t_and_noise(11, 20, 980, noise=False)
    x_t = _reference_inversion(prior, IMAGES, t, 200)
    a = _abar(prior, t)
    torch.testing.assert_close(grad, (1 - a) * 3.0 * (_eps(2, x_t) - _eps(-1, x_t)) / B, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- DDS
def test_dds_gradient_and_identity() -> None:
    prior = KnownEpsPrior(slope=SLOPE)
    guidance = DDSGuidance(DDSConfig(cfg_scale=2.0), prior, 10, torch.Generator().manual_seed(12))
    source = torch.rand((B,) + SHAPE, generator=torch.Generator().manual_seed(13))
    grad = _grad_of(guidance.edit_renders, IMAGES, _cams(), _emb(cond=4.0), 1, source, _emb(cond=2.0))
    t, noise = _t_and_noise(12, 50, 949)
    a = _abar(prior, t)
    zt_tgt = a.sqrt() * IMAGES + (1 - a).sqrt() * noise
    zt_src = a.sqrt() * source + (1 - a).sqrt() * noise
    cfg = lambda c, z: _eps(-1, z) + 2.0 * (_eps(c, z) - _eps(-1, z))  # noqa: E731
    torch.testing.assert_close(grad, (cfg(4.0, zt_tgt) - cfg(2.0, zt_src)) / B, atol=1e-5, rtol=1e-4)

    same = _grad_of(guidance.edit_renders, IMAGES, _cams(), _emb(), 2, IMAGES.clone(), _emb())
    assert torch.count_nonzero(same) == 0


# ---------------------------------------------------------------- shared pieces
def test_ddim_step_inverts_and_keeps_rows_in_place() -> None:
    prior = KnownEpsPrior()
    x = torch.randn(B, 4)
    eps = torch.randn(B, 4)
    t0, t1 = torch.tensor([0, 300, 500]), torch.tensor([400, 300, 900])
    there = ddim_step(prior.alphas_cumprod, x, eps, t0, t1)
    back = ddim_step(prior.alphas_cumprod, there, eps, t1, t0)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    assert torch.equal(there[1], x[1])  # t_from == t_to: untouched


def test_pixelwise_clip_limits_each_pixels_largest_channel() -> None:
    g = torch.tensor([[[[0.2]], [[-0.1]], [[0.05]]], [[[0.01]], [[0.02]], [[-0.03]]]])  # [2,3,1,1]
    out = pixelwise_clip(0.05)(g)
    torch.testing.assert_close(out[0], g[0] * 0.25)  # largest |0.2| -> 0.05, direction kept
    torch.testing.assert_close(out[1], g[1])  # already within the clip


def test_pixel_clip_option_reaches_the_renders() -> None:
    prior = KnownEpsPrior(slope=SLOPE)
    guidance = SDSGuidance(SDSConfig(cfg_scale=1.0, pixel_grad_clip=1e-4), prior, 10, torch.Generator().manual_seed(0))
    grad = _grad_of(guidance, IMAGES, _cams(), _emb(), 1)
    assert grad.abs().amax(dim=1).max() <= 1e-4 + 1e-9
