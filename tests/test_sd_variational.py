"""VSD's LoRA + camera variational model on the tiny Stable Diffusion pipelines."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from threedistill.core.cameras import Cameras
from threedistill.core.errors import UserError
from threedistill.priors.base import VariationalConfig, VariationalModel
from threedistill.priors.diffusers.sd_variational import LORA_KEY, SDVariationalModel
from threedistill.priors.diffusers.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior


@pytest.fixture(scope="module")
def priors(tiny_sd: dict[str, Path]) -> dict[str, StableDiffusionPrior]:
    return {kind: StableDiffusionPrior(StableDiffusionConfig(model=str(p)), None, "cpu") for kind, p in tiny_sd.items()}


def _cameras(n: int, seed: int) -> Cameras:
    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, :3] = torch.linalg.qr(torch.randn(n, 3, 3, generator=g))[0]
    c2w[:, :3, 3] = 2.0 * torch.randn(n, 3, generator=g)
    ones = torch.ones(n)
    return Cameras(c2w=c2w, fov_y=ones * math.radians(40), width=64, height=64,
                   elevation=ones * 10, azimuth=ones * 30, distance=ones * 2)


def _inputs(prior: StableDiffusionPrior, n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, prior.latent_size, prior.latent_size, generator=g)
    t = torch.tensor([50, 700][:n] + [400] * max(0, n - 2))
    emb = prior.embed(["a hamburger"] * n)
    return x, t, emb


def _train(model: SDVariationalModel, prior: StableDiffusionPrior, steps: int, seed: int = 1) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for i in range(steps):
        x0 = torch.randn(2, 4, prior.latent_size, prior.latent_size, generator=gen)
        losses.append(model.update(x0, prior.embed(["a hamburger"] * 2), _cameras(2, 10 + i), gen)["vsd_lora_loss"])
    return losses


@pytest.mark.parametrize("kind", ["sd1", "sd2v"])
def test_fresh_model_equals_prior(priors: dict[str, StableDiffusionPrior], kind: str) -> None:
    prior = priors[kind]
    model = prior.variational_model(VariationalConfig())
    assert isinstance(model, VariationalModel)
    x, t, emb = _inputs(prior)
    ref = prior.predict_eps(x, t, emb)
    for cams in (None, _cameras(2, 0)):
        out = model.predict_eps(x, t, emb, cams)
        assert out.shape == x.shape and out.dtype == x.dtype
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_update_trains_only_lora_and_camera(priors: dict[str, StableDiffusionPrior]) -> None:
    prior = priors["sd1"]
    prior_before = {k: v.clone() for k, v in prior.unet.state_dict().items()}
    model = prior.variational_model(VariationalConfig(lr=1e-3))
    own_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    cam_before = {k: v.clone() for k, v in model.camera_embedding.state_dict().items()}
    trainable = {id(p) for p in model.trainable_parameters()}
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    assert all((id(p) in trainable) == p.requires_grad for p in model.unet.parameters())

    losses = _train(model, prior, 5)
    assert all(math.isfinite(v) for v in losses)

    for k, v in prior.unet.state_dict().items():
        assert torch.equal(v, prior_before[k]), k
    after = model.unet.state_dict()
    lora_keys = [k for k in after if LORA_KEY in k]
    assert lora_keys and any(k.endswith("lora_B.default.weight") for k in lora_keys)
    for k, v in after.items():
        assert torch.equal(v, own_before[k]) == (LORA_KEY not in k), k
    for k, v in model.camera_embedding.state_dict().items():
        assert not torch.equal(v, cam_before[k]), k

    # a trained model differs from the prior, and cameras now matter
    x, t, emb = _inputs(prior)
    cams = _cameras(2, 3)
    out_none, out_cam = model.predict_eps(x, t, emb, None), model.predict_eps(x, t, emb, cams)
    assert not torch.allclose(out_none, prior.predict_eps(x, t, emb))
    assert not torch.allclose(out_none, out_cam)


def test_state_dict_round_trip(priors: dict[str, StableDiffusionPrior]) -> None:
    prior = priors["sd2v"]
    cfg = VariationalConfig(lr=1e-3, train_steps=2)
    first = prior.variational_model(cfg)
    _train(first, prior, 2)
    second = prior.variational_model(cfg)
    second.load_state_dict(first.state_dict())
    x, t, emb = _inputs(prior)
    cams = _cameras(2, 4)
    for c in (None, cams):
        torch.testing.assert_close(second.predict_eps(x, t, emb, c), first.predict_eps(x, t, emb, c), rtol=0, atol=0)
    # the optimiser state came along too: one more identical update keeps them identical
    assert _train(first, prior, 1, seed=7) == _train(second, prior, 1, seed=7)
    torch.testing.assert_close(second.predict_eps(x, t, emb, cams), first.predict_eps(x, t, emb, cams), rtol=0, atol=0)

    other = prior.variational_model(VariationalConfig(lora_rank=2))
    with pytest.raises(ValueError, match="lora_rank"):
        other.load_state_dict(first.state_dict())


def test_sdxl(priors: dict[str, StableDiffusionPrior]) -> None:
    prior = priors["sdxl"]
    model = prior.variational_model(VariationalConfig(lr=1e-3))
    x, t, emb = _inputs(prior)
    torch.testing.assert_close(model.predict_eps(x, t, emb, _cameras(2, 0)), prior.predict_eps(x, t, emb), rtol=1e-5, atol=1e-6)
    losses = _train(model, prior, 2)
    assert all(math.isfinite(v) for v in losses)
    out = model.predict_eps(x, t, emb, _cameras(2, 0))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, prior.predict_eps(x, t, emb))


def test_bad_config(priors: dict[str, StableDiffusionPrior]) -> None:
    with pytest.raises(UserError, match="lora_rank"):
        priors["sd1"].variational_model(VariationalConfig(lora_rank=0))


def test_camera_batch_mismatch(priors: dict[str, StableDiffusionPrior]) -> None:
    prior = priors["sd1"]
    model = prior.variational_model(VariationalConfig())
    x, t, emb = _inputs(prior)
    with pytest.raises(ValueError, match="camera batch"):
        model.predict_eps(x, t, emb, _cameras(3, 0))


@pytest.mark.cuda
def test_cuda_fp16_lora_stays_float32_and_trains(tiny_sd: dict[str, Path]) -> None:
    prior = StableDiffusionPrior(StableDiffusionConfig(model=str(tiny_sd["sd1"])), None, "cuda")
    assert prior.dtype == torch.float16
    model = prior.variational_model(VariationalConfig(lr=1e-3))
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in model.trainable_parameters())
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, prior.latent_size, prior.latent_size, generator=gen).cuda()
    emb = prior.embed(["a hamburger"] * 2)
    cams = _cameras(2, 0).to("cuda")
    losses = [model.update(x0, emb, cams, gen)["vsd_lora_loss"] for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    out = model.predict_eps(x0, torch.tensor([100, 600], device="cuda"), emb, cams)
    assert torch.isfinite(out).all()
