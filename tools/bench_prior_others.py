"""GPU memory and SDS-step time of the priors beyond plain Stable Diffusion (`bench_prior.py --prior NAME`).

    python tools/bench_prior.py --prior mvdream,zero123,deepfloyd-if,controlnet [--device cuda] [--small]

For each prior a model folder in its public layout is written with seeded random weights (speed and
memory do not depend on the weights' values) and loaded through the prior's production loader
(`PRIORS[name](Config(model=folder), None, device)`, offline, as `threedistill run` loads it):

* mvdream: MVDream's multi-view UNet at SD 2.1 size (our `MultiViewUNetModel`, 690 tensors, 868M
  parameters, the ashawkey/mvdream-sd2.1-diffusers layout), the SD 2.x VAE, a CLIP text encoder
  of the real width 1024 (2 layers: prompts are embedded once per run, outside the step);
* zero123: the 8-channel SD 1.x UNet (860M), the SD VAE, CLIP ViT-L/14 image encoder (the real
  304M) and the 772 -> 768 camera projection (ashawkey/zero123-xl-diffusers layout);
* deepfloyd-if: IF-I-XL's stage-I pixel UNet (64 px, 3 -> 6 channels, 704-2816 channels, 4.30B
  parameters as published) and a T5 encoder of the real width 4096 (2 layers, same reason as above);
* controlnet: SD 1.x (UNet 860M, VAE, CLIP text width 768) with a ControlNetModel made from its UNet
  (361M), conditioned on depth.

Then it times, after one warm-up, the median of --repeats whole SDS steps: renders [B,3,R,R] with
requires_grad -> SDSGuidance (encode, noise, one CFG prior call, w(t)(eps_hat - eps)) -> backward
to the renders; it prints the load time, parameter count, and on CUDA the weights' memory and the
step's peak. `--small` builds every model at a few-channel size instead, so the whole path runs
on a CPU in seconds (its times say nothing about real models). Real sizes need a GPU: on a CPU
they run, but slowly (and IF-I-XL's 4.3B parameters need ~17 GiB of host memory in float32).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

PRIOR_NAMES = ("mvdream", "zero123", "deepfloyd-if", "controlnet")
PROMPT = "a DSLR photo of a hamburger"


# --------------------------------------------------------------------------- model folders
def _index(path: Path, index: dict[str, Any]) -> None:
    import diffusers

    (path / "model_index.json").write_text(json.dumps({**index, "_diffusers_version": diffusers.__version__}, indent=2))


def _save(path: Path, parts: dict[str, Any], dtype: torch.dtype) -> None:
    for name, part in parts.items():
        if isinstance(part, torch.nn.Module):
            part = part.to(dtype)
        part.save_pretrained(str(path / name))


def _clip_tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    from threedistill.priors.diffusers.byte_tokenizer import write_byte_tokenizer

    return CLIPTokenizer.from_pretrained(str(write_byte_tokenizer(folder, 77)), local_files_only=True)


def _clip_text(tokenizer: Any, width: int, small: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = len(tokenizer)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
        num_attention_heads=4 if small else width // 64, max_position_embeddings=77, projection_dim=width,
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1))


def _sd_unet(small: bool, cross: int, in_channels: int = 4, sample_size: int = 64) -> Any:
    """An SD 1.x UNet (`sample_size` latents: 64 for 512 px, 32 for Zero123's 256 px), or a small one."""
    from diffusers import UNet2DConditionModel

    if small:
        return UNet2DConditionModel(
            sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=cross, attention_head_dim=8, norm_num_groups=32)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=cross, attention_head_dim=8)


def _vae(small: bool) -> Any:
    from diffusers import AutoencoderKL

    if small:
        return AutoencoderKL(block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32, sample_size=64)
    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512)


def _ddim() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def build_mvdream(path: Path, small: bool, dtype: torch.dtype) -> dict[str, Any]:
    from threedistill.priors.diffusers.mv_unet import MultiViewUNetModel

    size: dict[str, Any] = (dict(image_size=8, model_channels=32, attention_resolutions=[1, 2], channel_mult=[1, 2], num_res_blocks=1,
                 num_head_channels=16, context_dim=32) if small else
            dict(image_size=32, model_channels=320, attention_resolutions=[4, 2, 1], channel_mult=[1, 2, 4, 4],
                 num_res_blocks=2, num_head_channels=64, context_dim=1024))
    unet = MultiViewUNetModel(in_channels=4, out_channels=4, camera_dim=16, transformer_depth=1, **size)
    tok = _clip_tokenizer(path / "tokenizer")
    _save(path, dict(unet=unet, vae=_vae(small), text_encoder=_clip_text(tok, size["context_dim"], small), scheduler=_ddim()), dtype)
    _index(path, {"_class_name": "MVDreamPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
                  "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                  "unet": ["mv_unet", "MultiViewUNetModel"], "vae": ["diffusers", "AutoencoderKL"],
                  "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False})
    return {"model": str(path)}


def build_zero123(path: Path, small: bool, dtype: torch.dtype) -> dict[str, Any]:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from threedistill.priors.diffusers.zero123 import CLIPCameraProjection

    width = 32 if small else 768
    vision = (CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                               patch_size=8, projection_dim=32) if small else
              CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               image_size=224, patch_size=14, projection_dim=768))
    crop = vision.image_size
    parts = dict(unet=_sd_unet(small, width, in_channels=8, sample_size=32), vae=_vae(small), image_encoder=CLIPVisionModelWithProjection(vision),
                 clip_camera_projection=CLIPCameraProjection(width, 4), scheduler=_ddim(),
                 feature_extractor=CLIPImageProcessor(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}))
    _save(path, parts, dtype)
    _index(path, {"_class_name": "Zero123Pipeline", "vae": ["diffusers", "AutoencoderKL"],
                  "image_encoder": ["transformers", "CLIPVisionModelWithProjection"], "unet": ["diffusers", "UNet2DConditionModel"],
                  "scheduler": ["diffusers", "DDIMScheduler"], "feature_extractor": ["transformers", "CLIPImageProcessor"],
                  "clip_camera_projection": ["pipeline_zero123", "CLIPCameraProjection"], "requires_safety_checker": False,
                  "safety_checker": [None, None]})
    return {"model": str(path)}


def _t5_tokenizer(folder: Path) -> Any:
    """A T5 (Unigram) tokenizer over printable characters (no sentencepiece model needed)."""
    from transformers import T5Tokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(folder))
    return T5Tokenizer.from_pretrained(str(folder), local_files_only=True)


def if_unet_config(small: bool) -> dict[str, Any]:
    """IF stage I's pixel UNet (IF-I-XL-v1.0's diffusers config at full size)."""
    blocks = dict(down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
                  up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",))
    common = dict(in_channels=3, out_channels=6, mid_block_type="UNetMidBlock2DSimpleCrossAttn", encoder_hid_dim_type="text_proj",
                  addition_embed_type="text", resnet_time_scale_shift="scale_shift", act_fn="gelu", norm_num_groups=32)
    if small:
        return dict(common, sample_size=32, layers_per_block=1, block_out_channels=(32, 64),
                    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
                    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), cross_attention_dim=32,
                    encoder_hid_dim=32, addition_embed_type_num_heads=4, attention_head_dim=8)
    return dict(common, **blocks, sample_size=64, layers_per_block=3, block_out_channels=(704, 1408, 2112, 2816),
                cross_attention_dim=2816, encoder_hid_dim=4096, addition_embed_type_num_heads=64, attention_head_dim=64)


def build_deepfloyd(path: Path, small: bool, dtype: torch.dtype) -> dict[str, Any]:
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    tok = _t5_tokenizer(path.parent / "t5-tokenizer")
    t5 = (T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4) if small else
          T5Config(vocab_size=len(tok), d_model=4096, d_kv=64, d_ff=10240, num_layers=2, num_heads=64,
                   feed_forward_proj="gated-gelu"))
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range", thresholding=True,
                              dynamic_thresholding_ratio=0.95, sample_max_value=1.5)
    IFPipeline(tokenizer=tok, text_encoder=T5EncoderModel(t5).to(dtype), unet=UNet2DConditionModel(**if_unet_config(small)).to(dtype),
               scheduler=scheduler, safety_checker=None, feature_extractor=None, watermarker=None,
               requires_safety_checker=False).save_pretrained(str(path))
    return {"model": str(path)}


def build_controlnet(path: Path, small: bool, dtype: torch.dtype) -> dict[str, Any]:
    from diffusers import ControlNetModel, StableDiffusionPipeline

    width = 32 if small else 768
    tok = _clip_tokenizer(path.parent / "clip-tokenizer")
    unet = _sd_unet(small, width)
    StableDiffusionPipeline(vae=_vae(small).to(dtype), text_encoder=_clip_text(tok, width, small).to(dtype), tokenizer=tok,
                            unet=unet.to(dtype), scheduler=_ddim(), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(str(path / "sd"))
    ControlNetModel.from_unet(unet.float()).to(dtype).save_pretrained(str(path / "controlnet"))
    return {"model": str(path / "sd"), "controlnet": str(path / "controlnet"), "controlnet_condition": ("depth",)}


BUILDERS: dict[str, Callable[[Path, bool, torch.dtype], dict[str, Any]]] = {
    "mvdream": build_mvdream, "zero123": build_zero123, "deepfloyd-if": build_deepfloyd, "controlnet": build_controlnet}


# --------------------------------------------------------------------------- one prior's measurement
def _params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters()) if isinstance(module, torch.nn.Module) else 0


def bench_one(name: str, small: bool, device: torch.device, batch: int, res: int | None, repeats: int,
              cfg_scale: float | None) -> str:
    """Build, load and time one prior; its table row."""
    import threedistill.priors  # noqa: F401  (registers the priors)
    from threedistill.core.cameras import OrbitSamplerConfig, orbit_cameras
    from threedistill.core.types import ReferenceImage, RenderOutput, TextEmbeddings
    from threedistill.guidance.sds import SDSConfig, SDSGuidance
    from threedistill.priors.base import PRIORS

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        a = time.perf_counter()
        fields = BUILDERS[name](Path(tmp) / name, small, torch.float16 if cuda else torch.float32)
        built = time.perf_counter() - a
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        a = time.perf_counter()
        prior_name = "sd" if name == "controlnet" else name
        prior = PRIORS[prior_name](PRIORS.config_type(prior_name)(**fields), OrbitSamplerConfig(), device)
        sync()
        loaded = time.perf_counter() - a
    weights = torch.cuda.memory_allocated(device) / 2**30 if cuda else None
    params = sum(_params(getattr(prior, part, None)) for part in ("unet", "vae", "controlnet", "image_encoder", "projection"))
    res = res or int(prior.resolution)  # renders at the prior's own resolution unless --resolution
    views = batch if name != "mvdream" else max(4, batch - batch % 4)
    cams = orbit_cameras(torch.full((views,), 15.0), torch.arange(views) * 360.0 / views, torch.full((views,), 2.8),
                         torch.full((views,), 40.0), res, res).to(device)
    prompt = PROMPT
    if name == "zero123":
        ref = torch.rand(1, 3, res, res, generator=torch.Generator().manual_seed(3))
        alpha = torch.ones(1, 1, res, res)
        prompt = prior.condition_on_image(ReferenceImage(ref.to(device), alpha.to(device), cams[torch.tensor([0])]))
    e = prior.embed([prompt, ""])
    emb = TextEmbeddings(*(row[None].expand(views, *row.shape).contiguous() for row in (e[0], e[1], e[1])))
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(views, 3, res, res, generator=gen).to(device).requires_grad_()
    if name == "controlnet":  # the loop hands the prior each step's render; depth makes the condition
        depth = torch.rand(views, 1, res, res, generator=gen).to(device) + 2.0
        prior.observe_render(RenderOutput(images.detach(), torch.ones_like(depth), depth), cams)
    guidance = SDSGuidance(SDSConfig(cfg_scale=cfg_scale), prior, total_steps=1000, generator=torch.Generator().manual_seed(0))

    def step() -> float:
        images.grad = None
        sync()
        start = time.perf_counter()
        guidance(images, cams, emb, step=0).loss.backward()
        sync()
        return time.perf_counter() - start

    step()  # warm-up
    times = [step() for _ in range(repeats)]
    cfg = guidance.cfg_scale
    ok = images.grad is not None and bool(torch.isfinite(images.grad).all())
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if cuda else "-"
    shown = f"{weights:.2f}" if weights is not None else "-"
    del prior, guidance
    if cuda:
        torch.cuda.empty_cache()
    return (f"| {name} | {params / 1e6:.1f} | {views} x {res} px, CFG {cfg:g} | {built:.1f} | {loaded:.1f} | {statistics.median(times) * 1e3:.1f} "
            f"| {shown} | {peak} | {ok} |")


def bench_priors(names: list[str], small: bool, device: torch.device, batch: int, res: int | None, repeats: int,
                 cfg_scale: float | None) -> None:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise SystemExit(f"error: unknown --prior {unknown[0]}; use sd or {', '.join(PRIOR_NAMES)}")
    print(f"## Priors beyond Stable Diffusion (tools/bench_prior.py --prior ...{' --small' if small else ''})\n")
    print(f"- device {device}; {'SMALL models (timings mean nothing)' if small else 'real architecture sizes'}, random weights, "
          f"loaded through each prior's production loader; median of {repeats} SDS steps after a warm-up; CFG "
          f"{cfg_scale if cfg_scale is not None else 'the prior default'}")
    print("- MVDream scores groups of 4 views (its batch is rounded to whole groups); zero123 is conditioned on a random image; "
          "controlnet is SD 1.x + a ControlNet on depth\n")
    print("| prior | params (M: UNet, VAE, ControlNet, image encoder) | views, CFG | build s | load s | SDS step ms "
          "| weights GiB | peak GiB | grad finite |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for name in names:
        print(bench_one(name, small, device, batch, res, repeats, cfg_scale), flush=True)
