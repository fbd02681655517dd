"""StableDiffusionPrior on tiny SD-shaped pipelines saved with save_pretrained (DESIGN.md section 9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from threedistill.core.errors import UserError
from threedistill.priors.base import DiffusionPrior, add_noise
from threedistill.priors.diffusers.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior

from support import KINDS


@pytest.fixture(scope="session")
def priors(tiny_sd: dict[str, Path]) -> dict[str, StableDiffusionPrior]:
    return {kind: StableDiffusionPrior(StableDiffusionConfig(model=str(p)), None, "cpu") for kind, p in tiny_sd.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_loads_with_protocol_and_shapes(priors: dict[str, StableDiffusionPrior], kind: str) -> None:
    prior = priors[kind]
    assert isinstance(prior, DiffusionPrior)
    assert prior.resolution == 64 and prior.vae_scale_factor == 8
    assert prior.num_train_timesteps == 1000 and prior.alphas_cumprod.shape == (1000,)
    assert prior.is_sdxl == (kind == "sdxl") and prior.v_prediction == (kind == "sd2v")
    assert prior.defaults.cfg_scale == 100.0 and prior.defaults.view_dependent_prompts
    assert prior.model_id.split(":", 1)[1] == str(Path(prior.config.model).resolve())
    for module in [prior.unet, prior.vae, *prior.text_encoders]:
        assert not any(p.requires_grad for p in module.parameters())
        assert not module.training


@pytest.mark.parametrize("kind", KINDS)
def test_encode_decode_shapes_and_gradient(priors: dict[str, StableDiffusionPrior], kind: str) -> None:
    prior = priors[kind]
    img = torch.rand(2, 3, 40, 40, requires_grad=True)
    x0 = prior.encode(img)
    assert x0.shape == (2, 4, 8, 8) and x0.dtype == torch.float32
    x0.square().sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    torch.testing.assert_close(prior.encode(img), x0)  # deterministic (distribution mean)
    out = prior.decode(x0.detach())
    assert out.shape == (2, 3, 64, 64) and out.min() >= 0 and out.max() <= 1


def test_rgb_as_latents(tiny_sd: dict[str, Path]) -> None:
    prior = StableDiffusionPrior(StableDiffusionConfig(model=str(tiny_sd["sd1"]), rgb_as_latents=True), None, "cpu")
    img = torch.rand(2, 3, 32, 32, requires_grad=True)
    x0 = prior.encode(img)
    assert x0.shape == (2, 4, 8, 8)
    x0.sum().backward()
    assert img.grad.abs().sum() > 0
    assert prior.encode(torch.rand(1, 4, 8, 8)).shape == (1, 4, 8, 8)


@pytest.mark.parametrize("kind", KINDS)
def test_embed_shapes_and_batched_predict(priors: dict[str, StableDiffusionPrior], kind: str) -> None:
    prior = priors[kind]
    emb = prior.embed(["a red car", ""])
    if kind == "sdxl":
        assert emb.shape == (2, 17, 64)
        assert emb[0, -1, 32:].abs().sum() == 0 and emb[0, -1, :32].abs().sum() > 0
        assert emb[1].abs().sum() == 0  # empty prompt -> zeros, as the SDXL pipeline does
    else:
        assert emb.shape == (2, 16, 32)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([500, 500])
    both = prior.predict_eps(x, t, emb)
    one = torch.cat([prior.predict_eps(x[i : i + 1], t[i : i + 1], emb[i : i + 1]) for i in range(2)])
    assert both.shape == x.shape and not both.requires_grad
    torch.testing.assert_close(both, one, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[0], both[1])  # the text conditioning reaches the UNet


def test_v_prediction_converted_to_eps(priors: dict[str, StableDiffusionPrior]) -> None:
    """eps from the prior recovers the noise exactly as the scheduler's own v-parameterisation."""
    prior = priors["sd2v"]
    emb = prior.embed(["a chair"]).expand(3, -1, -1)
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 400, 900])
    x_t = prior.scheduler.add_noise(x0, noise, t)
    torch.testing.assert_close(x_t, add_noise(prior.alphas_cumprod, x0, noise, t))
    v = prior.unet(x_t, t, encoder_hidden_states=emb).sample
    eps = prior.predict_eps(x_t, t, emb)
    # If v were the true velocity of (x0, noise), eps must equal that noise:
    v_true = prior.scheduler.get_velocity(x0, noise, t)
    a = prior.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - prior.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(a * v_true + s * x_t, noise, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eps, a * v + s * x_t, rtol=1e-5, atol=1e-5)
    # DDIM's own x0 prediction from v agrees with Tweedie's from our eps.
    x0_ddim = a * x_t - s * v
    torch.testing.assert_close((x_t - s * eps) / a, x0_ddim, rtol=1e-3, atol=1e-3)


def test_from_components(priors: dict[str, StableDiffusionPrior]) -> None:
    p = priors["sdxl"]
    q = StableDiffusionPrior.from_components(
        p.unet, p.vae, p.text_encoders[0], p.tokenizers[0], p.scheduler, StableDiffusionConfig(), "cpu",
        text_encoder_2=p.text_encoders[1], tokenizer_2=p.tokenizers[1],
    )
    assert q.is_sdxl and q.model_id.startswith("sdxl:components:")
    emb = q.embed(["a car"])
    torch.testing.assert_close(emb, p.embed(["a car"]))


def _assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_missing_local_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope" / "model.safetensors")
    with pytest.raises(UserError) as err:
        StableDiffusionPrior(StableDiffusionConfig(model=missing), None, "cpu")
    _assert_one_line(err, missing, "does not exist", "--prior.model")


def test_folder_without_model_index(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        StableDiffusionPrior(StableDiffusionConfig(model=str(tmp_path)), None, "cpu")
    _assert_one_line(err, str(tmp_path), "model_index.json")


def test_offline_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = "stabilityai/stable-diffusion-2-1-base"
    with pytest.raises(UserError) as err:
        StableDiffusionPrior(StableDiffusionConfig(model=model), None, "cpu")
    _assert_one_line(err, f"'{model}'", "huggingface-cli download", "--prior.allow-download", "--prior toyworld")


def test_corrupt_component(tiny_sd: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "broken"
    shutil.copytree(tiny_sd["sd1"], copy)
    for f in (copy / "unet").glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError) as err:
        StableDiffusionPrior(StableDiffusionConfig(model=str(copy)), None, "cpu")
    _assert_one_line(err, str(copy))


def test_small_tokenizer_rejected(tiny_sd: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "smalltok"
    shutil.copytree(tiny_sd["sd1"], copy)
    tok_dir = copy / "tokenizer"
    for f in tok_dir.iterdir():
        f.unlink()
    tokens = [chr(ord("a") + i) for i in range(26)] + [chr(ord("a") + i) + "</w>" for i in range(26)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (tok_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16).save_pretrained(str(tok_dir))
    with pytest.raises(UserError) as err:
        StableDiffusionPrior(StableDiffusionConfig(model=str(copy)), None, "cpu")
    _assert_one_line(err, "tokenizer of", str(copy), "only 54 tokens")


def test_corrupt_single_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"junk")
    with pytest.raises(UserError) as err:
        StableDiffusionPrior(StableDiffusionConfig(model=str(bad)), None, "cpu")
    _assert_one_line(err, str(bad), "re-download")


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_cuda_fp16(tiny_sd: dict[str, Path], kind: str) -> None:
    prior = StableDiffusionPrior(StableDiffusionConfig(model=str(tiny_sd[kind])), None, "cuda")
    assert prior.unet.dtype == torch.float16
    assert prior.vae.dtype == (torch.float32 if kind == "sdxl" else torch.float16)
    img = torch.rand(2, 3, 64, 64, device="cuda", requires_grad=True)
    x0 = prior.encode(img)
    assert x0.dtype == torch.float32
    x0.sum().backward()
    assert torch.isfinite(img.grad).all()
    emb = prior.embed(["a red car", ""])
    eps = prior.predict_eps(x0.detach(), torch.tensor([300, 700], device="cuda"), emb)
    assert eps.dtype == torch.float32 and torch.isfinite(eps).all()


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_matches_diffusers_pipeline(tiny_sd: dict[str, Path], priors: dict[str, StableDiffusionPrior], kind: str) -> None:
    """Embeddings and the UNet call agree with the diffusers pipeline's own encode_prompt / time ids."""
    from diffusers import DiffusionPipeline

    prior = priors[kind]
    pipe = DiffusionPipeline.from_pretrained(str(tiny_sd[kind]), local_files_only=True)
    emb = prior.embed(["a red car"])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([321])
    with torch.no_grad():
        if kind == "sdxl":
            cond, _, pooled, _ = pipe.encode_prompt("a red car", device="cpu", do_classifier_free_guidance=False)
            torch.testing.assert_close(emb[:, :-1], cond)
            torch.testing.assert_close(emb[:, -1, : pooled.shape[-1]], pooled)
            time_ids = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), cond.dtype,
                                              text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
            added = {"text_embeds": pooled, "time_ids": time_ids}
            ref = pipe.unet(x, t, encoder_hidden_states=cond, added_cond_kwargs=added).sample
        else:
            cond, _ = pipe.encode_prompt("a red car", "cpu", 1, False)
            torch.testing.assert_close(emb, cond)
            ref = pipe.unet(x, t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(prior.predict_eps(x, t, emb), ref, rtol=1e-4, atol=1e-5)


def test_memory_options(tiny_sd: dict[str, Path], priors: dict[str, StableDiffusionPrior]) -> None:
    cfg = StableDiffusionConfig(model=str(tiny_sd["sd1"]), attention_slicing=True, vae_tiling=True)
    prior = StableDiffusionPrior(cfg, None, "cpu")
    emb = prior.embed(["a red car"])
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([100])
    torch.testing.assert_close(prior.predict_eps(x, t, emb), priors["sd1"].predict_eps(x, t, emb), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_single_file_dispatch(tiny_sd: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """A .safetensors checkpoint goes through `from_single_file` of the pipeline its keys imply.

    (A real LDM-format conversion of the tiny model is out of scope: the loader is stubbed.)
    """
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    key = "conditioner.embedders.1.model.ln_final.weight" if kind == "sdxl" else "cond_stage_model.transformer.x"
    ckpt = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(1)}, str(ckpt))
    calls: list[tuple[str, dict]] = []

    def fake(cls: type, path: str, **kwargs: object) -> object:
        calls.append((cls.__name__, {"path": path, **kwargs}))
        return DiffusionPipeline.from_pretrained(str(tiny_sd[kind]), local_files_only=True)

    for cls in (StableDiffusionPipeline, StableDiffusionXLPipeline):
        monkeypatch.setattr(cls, "from_single_file", classmethod(fake))
    prior = StableDiffusionPrior(StableDiffusionConfig(model=str(ckpt)), None, "cpu")
    name, kwargs = calls[0]
    assert name == ("StableDiffusionXLPipeline" if kind == "sdxl" else "StableDiffusionPipeline")
    assert kwargs["path"] == str(ckpt) and kwargs["local_files_only"] is True
    assert prior.is_sdxl == (kind == "sdxl") and prior.model_id.endswith(str(ckpt.resolve()))
