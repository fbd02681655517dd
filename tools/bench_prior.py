"""Benchmark the Stable Diffusion prior inside one SDS step, all measured in one run.

    python tools/bench_prior.py [--device cpu|cuda] [--resolution PX] [--batch N] [--repeats N]
                                [--dtype auto|float16|float32] [--channels-last] [--compile]
    python tools/bench_prior.py --prior mvdream,zero123,deepfloyd-if,controlnet [--device cuda] [--small]

The second form measures the priors beyond Stable Diffusion (tools/bench_prior_others.py).

Builds the real Stable Diffusion 2.1-base UNet and VAE architectures from their configs with
seeded random weights (no download; speed does not depend on the weights' values), a tiny CLIP
text encoder with the real hidden size 1024 (prompts are embedded once per run and are not part
of the SDS step), and the SD DDIM scheduler. It then times, after a warm-up, the median of
--repeats runs of:

  (a) one UNet call on the SDS batch (2*B latents: cond + uncond) through `prior.predict_eps`,
      plus the bare `unet(...)` forward for comparison;
  (b) one full SDS step: render-sized images [B,3,R,R] with requires_grad -> SDSGuidance
      (VAE encode with grad, noise, one CFG prior call, w(t)(eps_hat - eps), the reparameterised
      loss) -> loss.backward() to the images; with the encode / guidance / backward breakdown;
  (c) the overhead ratio: step time / (UNet time x UNet calls counted in the step).

The prior is `threedistill.priors.diffusers.stable_diffusion.StableDiffusionPrior.from_components`; if that
module is missing or its API does not fit, a minimal in-script prior with the same operations
is used instead and the output says so. On CUDA the timings are bracketed by
torch.cuda.synchronize() and the GPU name and peak memory are printed. Times are wall-clock and
only their ratios are comparable across machines (DESIGN.md section 8).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import platform
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from threedistill.core.cameras import orbit_cameras
from threedistill.guidance.sds import SDSConfig, SDSGuidance
from threedistill.core.types import TextEmbeddings
from threedistill.priors.base import GuidanceDefaults, scaled_linear_alphas_cumprod

MODEL_ID = "stabilityai/stable-diffusion-2-1-base"
CROSS_DIM = 1024
TEXT_LEN = 77
VAE_SCALE = 0.18215


# --------------------------------------------------------------------------- components


def build_unet():
    """The SD 2.1-base UNet (865M parameters), random weights."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        attention_head_dim=(5, 10, 20, 20), cross_attention_dim=CROSS_DIM,
        use_linear_projection=True, act_fn="silu", norm_num_groups=32, flip_sin_to_cos=True,
        freq_shift=0, center_input_sample=False, downsample_padding=1, mid_block_scale_factor=1,
        norm_eps=1e-5,
    ).eval().requires_grad_(False)


def build_vae():
    """The SD 2.x VAE (x8 downsampling, 4 latent channels), random weights."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, act_fn="silu",
        norm_num_groups=32, sample_size=512, scaling_factor=VAE_SCALE,
    ).eval().requires_grad_(False)


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )


def build_text(folder: Path):
    """A byte-level CLIP tokenizer (77 tokens) and a 2-layer CLIP text encoder of hidden size 1024."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from threedistill.priors.diffusers.byte_tokenizer import write_byte_tokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(write_byte_tokenizer(folder, TEXT_LEN)), local_files_only=True)
    vocab = len(tokenizer)
    cfg = CLIPTextConfig(
        vocab_size=vocab, hidden_size=CROSS_DIM, intermediate_size=4 * CROSS_DIM, num_hidden_layers=2,
        num_attention_heads=16, max_position_embeddings=TEXT_LEN, projection_dim=CROSS_DIM, hidden_act="gelu",
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
    )
    return CLIPTextModel(cfg).eval().requires_grad_(False), tokenizer


# --------------------------------------------------------------------------- priors


def _filtered_kwargs(fn: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def make_project_prior(components: dict[str, Any], device: torch.device, args) -> tuple[Any, str]:
    """The project's StableDiffusionPrior built from in-memory components."""
    from threedistill.priors.diffusers.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior

    wanted = {"model": MODEL_ID, "dtype": args.dtype, "compile": args.compile, "cfg_scale": args.cfg_scale}
    if args.channels_last is not None:
        wanted["channels_last"] = args.channels_last
    if dataclasses.is_dataclass(StableDiffusionConfig):
        names = {f.name for f in dataclasses.fields(StableDiffusionConfig)}
        config = StableDiffusionConfig(**{k: v for k, v in wanted.items() if k in names})
    else:
        config = StableDiffusionConfig(**_filtered_kwargs(StableDiffusionConfig, wanted))
    kwargs = dict(components, config=config, device=device)
    build = StableDiffusionPrior.from_components
    try:
        prior = build(**_filtered_kwargs(build, kwargs))
    except (TypeError, AttributeError):
        kwargs["device"] = str(device)
        prior = build(**_filtered_kwargs(build, kwargs))
    shown = ", ".join(f"{k}={getattr(config, k)!r}" for k in ("dtype", "channels_last", "compile", "cfg_scale") if hasattr(config, k))
    return prior, f"threedistill.priors.diffusers.stable_diffusion.StableDiffusionPrior.from_components (config {shown})"


class MinimalSDPrior:
    """Fallback with the DiffusionPrior operations SDS uses, written the way the design asks:
    fp16 UNet on CUDA, fp32 VAE encoder with grad, one no-grad UNet call per batch."""

    num_train_timesteps = 1000

    def __init__(self, unet, vae, text_encoder, tokenizer, device: torch.device, dtype: str, channels_last: bool, compile: bool):
        self.device = device
        self.channels_last = channels_last
        self.unet_dtype = torch.float16 if (dtype == "float16" or (dtype == "auto" and device.type == "cuda")) else torch.float32
        self.unet = unet.to(device=device, dtype=self.unet_dtype)
        self.vae = vae.to(device=device, dtype=torch.float32)
        if channels_last:
            self.unet = self.unet.to(memory_format=torch.channels_last)
        if compile:
            self.unet = torch.compile(self.unet)
        self.text_encoder = text_encoder.to(device)
        self.tokenizer = tokenizer
        self.alphas_cumprod = scaled_linear_alphas_cumprod().to(device)
        self.resolution = 512
        self.defaults = GuidanceDefaults(cfg_scale=100.0, min_step=20, max_step=980)

    def encode(self, images: Tensor) -> Tensor:
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = torch.nn.functional.interpolate(images, (self.resolution,) * 2, mode="bilinear", align_corners=False)
        posterior = self.vae.encode(images.float() * 2.0 - 1.0).latent_dist
        return posterior.sample() * VAE_SCALE

    def decode(self, x0: Tensor) -> Tensor:
        with torch.no_grad():
            return (self.vae.decode(x0 / VAE_SCALE).sample * 0.5 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> Tensor:
        ids = self.tokenizer(texts, padding="max_length", max_length=TEXT_LEN, truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0].float()

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras=None) -> Tensor:
        x = x_t.to(self.unet_dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.unet(x, t, encoder_hidden_states=emb.to(self.unet_dtype)).sample.float()


# --------------------------------------------------------------------------- timing


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def machine_description(device: torch.device) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        f"- CPU: {cpu}; {os.cpu_count()} logical cores visible, torch threads {torch.get_num_threads()}",
        f"- OS: {platform.platform()}; Python {platform.python_version()}",
        f"- torch {torch.__version__}; device {device}",
    ]
    try:
        import diffusers
        import transformers

        lines.append(f"- diffusers {diffusers.__version__}; transformers {transformers.__version__}")
    except ImportError:
        pass
    try:
        load = os.getloadavg()
        lines.append(f"- 1-min load average at the end: {load[0]:.2f} (other work on the machine inflates CPU times)")
    except OSError:
        pass
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines.append(f"- GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    return lines


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=None, help="render size in pixels (default 512 on CUDA, 128 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="views per SDS step B (default 4 on CUDA, 1 on CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions after one warm-up (default 10 on CUDA, 3 on CPU)")
    parser.add_argument("--dtype", choices=["auto", "float16", "float32"], default="auto", help="UNet dtype (auto: fp16 on CUDA)")
    parser.add_argument("--cfg-scale", type=float, default=None, help="CFG scale (!= 1 so cond + uncond are batched; default "
                        "100 for sd, each other prior's own default)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last UNet on CUDA (default: the prior config's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (first call compiles; slow)")
    parser.add_argument("--fallback", action="store_true", help="use the in-script minimal prior even if the project's imports")
    parser.add_argument("--objectives", default="sds", help="comma-separated objectives timed as whole steps with their peak "
                        "memory, e.g. sds,vsd,ism (vsd trains its LoRA model in the step; ism inverts with DDIM)")
    parser.add_argument("--prior", default="sd", help="sd (this benchmark), or a comma-separated list of the priors beyond "
                        "SD: mvdream, zero123, deepfloyd-if, controlnet (bench_prior_others.py: load + SDS step + memory)")
    parser.add_argument("--small", action="store_true", help="with --prior other than sd: few-channel models, so it runs on "
                        "a CPU in seconds (checks the path; its times mean nothing)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.prior != "sd":
        from bench_prior_others import bench_priors

        if not args.small and args.device == "cpu":
            print("NOTE: real-size priors on a CPU are slow and IF-I-XL needs ~17 GiB of memory; the numbers to publish "
                  "come from --device cuda (use --small to check the path here)\n")
        bench_priors([n.strip() for n in args.prior.split(",") if n.strip()], args.small, torch.device(args.device),
                     args.batch or (4 if args.device == "cuda" else 1), args.resolution, args.repeats or (10 if args.device == "cuda" else 2),
                     args.cfg_scale)
        return
    if args.cfg_scale is None:
        args.cfg_scale = 100.0
    cuda = args.device == "cuda"
    res = args.resolution or (512 if cuda else 128)
    batch = args.batch or (4 if cuda else 1)
    repeats = args.repeats or (10 if cuda else 3)
    if res % 8:
        parser.error("--resolution must be a multiple of 8")
    device = torch.device(args.device)
    if not cuda:
        torch.set_flush_denormal(True)  # random weights can produce denormals; they slow CPUs down
    timer = Timer(device)

    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()  # silence "modules kept in float32" notices on .to()
    except ImportError:
        pass
    t0 = time.perf_counter()
    torch.manual_seed(0)
    unet, vae, scheduler = build_unet(), build_vae(), build_scheduler()
    tmp = tempfile.TemporaryDirectory()
    text_encoder, tokenizer = build_text(Path(tmp.name) / "tokenizer")
    build_s = time.perf_counter() - t0
    n_unet = sum(p.numel() for p in unet.parameters())
    n_venc = sum(p.numel() for p in vae.encoder.parameters()) + sum(p.numel() for p in vae.quant_conv.parameters())
    components = dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    notes: list[str] = []
    prior = None
    if not args.fallback:
        try:
            prior, prior_desc = make_project_prior(components, device, args)
        except Exception as exc:  # missing module or a different API: say so and fall back
            notes.append(f"project prior unavailable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                         "timed the in-script MinimalSDPrior instead (same operations: VAE encode with grad, "
                         "one fp16/fp32 UNet call on cond+uncond, SDS weighting, reparameterised loss)")
            if os.environ.get("BENCH_DEBUG"):
                traceback.print_exc()
    if prior is None:
        prior = MinimalSDPrior(unet, vae, text_encoder, tokenizer, device, args.dtype, bool(args.channels_last), args.compile)
        prior_desc = "in-script MinimalSDPrior" + (" (--fallback)" if args.fallback else "")
    unet_module = getattr(prior, "unet", unet)
    unet_param = next(unet_module.parameters())
    vae_param = next(getattr(prior, "vae", vae).parameters())
    prior_cfg = getattr(prior, "config", None)
    channels_last = bool(args.channels_last if args.channels_last is not None else getattr(prior_cfg, "channels_last", False))
    channels_last = channels_last and (cuda or isinstance(prior, MinimalSDPrior))
    prior_res = int(getattr(prior, "resolution", 512))
    if prior_res != res and hasattr(prior, "resolution"):
        try:
            prior.resolution = res  # encode resizes renders to prior.resolution: time at --resolution
            notes.append(f"prior.resolution overridden {prior_res} -> {res} so renders are encoded at --resolution "
                         f"(a run always encodes at {prior_res})")
        except AttributeError:
            notes.append(f"prior.resolution is fixed at {prior_res}; renders are resized to it by encode")
    enc_res = int(getattr(prior, "resolution", res))
    latent = enc_res // 8

    # Prompt embeddings: computed once (as in a run), then repeated per view.
    try:
        e = prior.embed(["a DSLR photo of a hamburger", ""]).to(device)
        if e.shape[-1] != CROSS_DIM:
            raise ValueError(f"embedding width {e.shape[-1]}")
        cond, uncond = e[:1], e[1:2]
    except Exception as exc:
        notes.append(f"prior.embed failed ({type(exc).__name__}: {exc}); used random [1,{TEXT_LEN},{CROSS_DIM}] embeddings")
        g = torch.Generator().manual_seed(1)
        cond, uncond = (torch.randn(1, TEXT_LEN, CROSS_DIM, generator=g).to(device) for _ in range(2))
    emb = TextEmbeddings(cond.expand(batch, *cond.shape[1:]).contiguous(), uncond.expand(batch, *uncond.shape[1:]).contiguous(),
                         uncond.expand(batch, *uncond.shape[1:]).contiguous())
    cams = orbit_cameras(torch.full((batch,), 15.0), torch.linspace(-180, 180, batch + 1)[:-1],
                         torch.full((batch,), 2.5), torch.full((batch,), 40.0), res, res).to(device)

    gen = torch.Generator().manual_seed(0)
    guidance = SDSGuidance(SDSConfig(cfg_scale=args.cfg_scale), prior, total_steps=1000, generator=gen)

    # Instrumentation: time encode inside the step and count UNet calls.
    calls = {"unet": 0, "predict_eps": 0}
    handle = unet_module.register_forward_pre_hook(lambda *_: calls.__setitem__("unet", calls["unet"] + 1))
    encode_times: list[float] = []
    orig_encode, orig_predict = prior.encode, prior.predict_eps

    def timed_encode(images: Tensor) -> Tensor:
        a = timer.now()
        out = orig_encode(images)
        encode_times.append(timer.now() - a)
        return out

    predict_times: list[float] = []

    def counted_predict(*a, **k):
        calls["predict_eps"] += 1
        start = timer.now()
        out = orig_predict(*a, **k)
        predict_times.append(timer.now() - start)
        return out

    prior.encode, prior.predict_eps = timed_encode, counted_predict

    gi = torch.Generator().manual_seed(2)
    images = torch.rand(batch, 3, res, res, generator=gi).to(device).requires_grad_()
    x_t = torch.randn(2 * batch, 4, latent, latent, generator=gi).to(device)
    t_sds = torch.randint(20, 981, (2 * batch,), generator=gi).to(device)
    emb2 = torch.cat([emb.cond, emb.uncond])

    def unet_via_prior() -> None:
        orig_predict(x_t, t_sds, emb2, None)

    def unet_bare() -> None:
        x = x_t.to(unet_param.dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            unet_module(x, t_sds, encoder_hidden_states=emb2.to(unet_param.dtype))

    step_log: dict[str, list[float]] = {"step": [], "call": [], "encode": [], "predict": [], "backward": []}

    def sds_step(record: bool) -> None:
        images.grad = None
        encode_times.clear()
        predict_times.clear()
        a = timer.now()
        out = guidance(images, cams, emb, step=0)
        b = timer.now()
        out.loss.backward()
        c = timer.now()
        if record:
            step_log["step"].append(c - a)
            step_log["call"].append(b - a)
            step_log["encode"].append(sum(encode_times))
            step_log["predict"].append(sum(predict_times))
            step_log["backward"].append(c - b)

    def timed(fn: Callable[[], None]) -> float:
        a = timer.now()
        fn()
        return timer.now() - a

    # Warm-up, then interleave the three measurements so machine noise hits them alike.
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    unet_via_prior()
    unet_bare()
    calls["unet"] = calls["predict_eps"] = 0
    sds_step(record=False)
    unet_calls, predict_calls = calls["unet"], calls["predict_eps"]
    t_prior: list[float] = []
    t_bare: list[float] = []
    for _ in range(repeats):
        t_prior.append(timed(unet_via_prior))
        t_bare.append(timed(unet_bare))
        sds_step(record=True)
    handle.remove()
    prior.encode, prior.predict_eps = orig_encode, orig_predict
    grad_ok = images.grad is not None and bool(torch.isfinite(images.grad).all())
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None

    unet_ms = median_ms(t_prior)
    step_ms = median_ms(step_log["step"])
    enc_ms = median_ms(step_log["encode"])
    bwd_ms = median_ms(step_log["backward"])
    pred_ms = median_ms(step_log["predict"])
    rest_ms = statistics.median([c - e - q for c, e, q in zip(step_log["call"], step_log["encode"], step_log["predict"])]) * 1e3
    if unet_calls == 0:  # a compiled UNet may bypass the module hook: count prior calls instead
        unet_calls = predict_calls
    ratio = step_ms / (unet_ms * max(unet_calls, 1))

    print("## Stable Diffusion prior benchmark (tools/bench_prior.py)\n")
    print("Machine:")
    for line in machine_description(device):
        print(line)
    print(f"\nSetup: SD 2.1-base architecture, random weights (UNet {n_unet / 1e6:.0f}M params, "
          f"VAE encoder {n_venc / 1e6:.0f}M); prior: {prior_desc}")
    print(f"- UNet dtype {unet_param.dtype}, VAE dtype {vae_param.dtype}; channels_last in effect={channels_last}, "
          f"compile={args.compile}; cfg_scale={guidance.cfg_scale}")
    print(f"- B={batch} views, render {res}x{res} px, encoded at {enc_res} px -> latents {latent}x{latent}; "
          f"UNet batch {2 * batch} (cond+uncond); median of {repeats} after 1 warm-up; components built in {build_s:.1f} s")
    print(f"- UNet calls per SDS step (counted): {unet_calls} forward(s) in {predict_calls} predict_eps call(s); "
          f"image gradient finite: {grad_ok}")
    if peak is not None:
        print(f"- peak CUDA memory allocated: {peak:.2f} GiB")
    for n in notes:
        print(f"- NOTE: {n}")
    print()
    print("| measurement | median ms | share of step |")
    print("|---|---:|---:|")
    print(f"| (a) UNet call, batch {2 * batch} via prior.predict_eps | {unet_ms:.1f} | {unet_ms / step_ms:.0%} |")
    print(f"| (a') bare unet(...) forward, batch {2 * batch} | {median_ms(t_bare):.1f} | {median_ms(t_bare) / step_ms:.0%} |")
    print(f"| (b) full SDS step (guidance call + backward) | {step_ms:.1f} | 100% |")
    print(f"| - VAE encode with grad (inside the call) | {enc_ms:.1f} | {enc_ms / step_ms:.0%} |")
    print(f"| - prior.predict_eps inside the step (the UNet call) | {pred_ms:.1f} | {pred_ms / step_ms:.0%} |")
    print(f"| - rest of the call: timesteps, noise, CFG, w(t), loss | {rest_ms:.1f} | {rest_ms / step_ms:.0%} |")
    print(f"| - loss.backward() through the VAE encoder to the image | {bwd_ms:.1f} | {bwd_ms / step_ms:.0%} |")
    print(f"| - encode + backward | {enc_ms + bwd_ms:.1f} | {(enc_ms + bwd_ms) / step_ms:.0%} |")
    print(f"\n(c) overhead ratio = step / (UNet x {unet_calls} call) = **{ratio:.2f}x**"
          f" (standalone UNet time (a); with the in-step UNet time instead: {step_ms / max(pred_ms, 1e-9):.2f}x)")
    names = [n.strip() for n in args.objectives.split(",") if n.strip()]
    if names != ["sds"]:
        bench_objectives(names, prior, unet_module, images, cams, emb, timer, repeats, device, args.cfg_scale)
    tmp.cleanup()


def bench_objectives(names: list[str], prior: Any, unet: Any, images: Tensor, cams: Any, emb: TextEmbeddings, timer: "Timer",
                     repeats: int, device: torch.device, cfg_scale: float) -> None:
    """(d) whole objective steps (call + backward + after_step): median ms, UNet forwards, peak memory."""
    import threedistill.guidance  # noqa: F401  (registers the objectives)
    from threedistill.core.objective import OBJECTIVES

    cuda = device.type == "cuda"
    calls = {"unet": 0}
    handle = unet.register_forward_pre_hook(lambda *_: calls.__setitem__("unet", calls["unet"] + 1))
    rows = []
    for name in names:
        if name not in OBJECTIVES:
            rows.append(f"| {name} | unknown objective | | |")
            continue
        cls = OBJECTIVES[name]
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        config = cls.Config(**({"cfg_scale": cfg_scale if name == "sds" else 7.5} if "cfg_scale" in fields else {}))
        try:
            objective = cls(config, prior, 1000, torch.Generator().manual_seed(0))
        except Exception as exc:  # e.g. the in-script fallback prior has no LoRA model for vsd
            rows.append(f"| {name} | not built: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} | | |")
            continue

        def step(i: int) -> None:
            images.grad = None
            out = objective(images, cams, emb, i)
            out.loss.backward()
            objective.after_step(i)

        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step(1)  # warm-up (VSD builds its LoRA optimiser here)
        calls["unet"] = 0
        times = []
        for i in range(repeats):
            a = timer.now()
            step(2 + i)
            times.append(timer.now() - a)
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if cuda else "-"
        rows.append(f"| {name} | {median_ms(times):.1f} | {calls['unet'] / repeats:.1f} | {peak} |")
        del objective
    handle.remove()
    print("\n(d) whole objective steps (guidance call + backward + after_step), same batch and resolution:\n")
    print("| objective | median ms | UNet forwards per step | peak CUDA GiB |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
