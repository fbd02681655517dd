"""Test support, the one module tests import helpers from (no test module imports another).

- tiny toyworld run configurations and the trainers of runs built from them;
- `KnownEpsPrior`, a diffusion prior whose epsilon predictions are known in closed form;
- tiny Stable-Diffusion-shaped, InstructPix2Pix and text-to-video diffusers pipelines built
  from configs with seeded random weights (DESIGN.md section 9), saved with `save_pretrained`
  so tests load them through the same code path as a real checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
from torch import Tensor

from threedistill.config import ComponentNames, RunConfig, parse_run_args
from threedistill.engine.loop import StageTrainer
from threedistill.engine.plan import Stage, single_stage
from threedistill.engine.run import Run
from threedistill.engine.run_dir import new_run_dir
from threedistill.priors.base import GuidanceDefaults, scaled_linear_alphas_cumprod
from threedistill.priors.diffusers.byte_tokenizer import write_byte_tokenizer

# ---------------------------------------------------------------------- tiny runs
TINY_FLAGS = [
    "--prior", "toyworld",
    "--steps", "6",
    "--prior.num-references", "16",
    "--prior.resolution", "32",
    "--sampler.width", "32",
    "--sampler.height", "32",
    "--sampler.batch-size", "2",
    "--representation.num-points", "300",
    "--log.no-progress",
    "--log.turntable-frames", "4",
    "--log.turntable-resolution", "32",
    "--log.eval-views", "4",
    "--log.preview-every", "3",
    "--log.checkpoint-every", "3",
    "--log.log-every", "1",
    "--log.export-formats", "splat", "video",
    "--device", "cpu",
]


def tiny_kind_flags(kind: str) -> list[str]:
    """The flags of a tiny NeRF, mesh or 4D (bouncing ball, 3 frames) run exporting mesh.glb (TINY_FLAGS, adapted)."""
    common = ["--log.export-formats", "glb", "--mesh.resolution", "32"]
    if kind == "4d":
        return [*TINY_FLAGS, "--dynamic", "--prompt", "a bouncing ball", "--prior.frames", "3", "--prior.resolution", "16",
                "--prior.num-references", "12", "--prior.uncond-references-per-object", "2", *common]
    base = [f for i, f in enumerate(TINY_FLAGS) if "num-points" not in f and "num-points" not in TINY_FLAGS[i - 1]]
    if kind == "nerf":
        return [*base, "--representation", "nerf", *[f"--representation.{k.replace('_', '-')}={v}" for k, v in SMALL_NERF.items()], *common]
    if kind == "mesh":
        return [*base, "--representation", "mesh", "--representation.init-subdivisions", "2", *common]
    raise ValueError(kind)


def tiny_run_kwargs() -> dict[str, object]:
    """TINY_FLAGS as `td.run` keywords (sections as mappings, dotted keys), with every export format
    but obj (its texture bake is slow) and the metrics logged every step."""
    return dict(prior="toyworld", steps=6, device="cpu", progress=False,
                sampler={"width": 32, "height": 32, "batch_size": 2}, representation={"num_points": 300},
                log={"turntable_frames": 4, "turntable_resolution": 32, "eval_views": 4, "preview_every": 3,
                     "checkpoint_every": 3, "log_every": 1, "export_formats": ["splat", "video", "glb", "ply"]},
                **{"prior.num_references": 16, "prior.resolution": 32, "mesh.resolution": 48})


SMALL_NERF = dict(levels=4, log2_table_size=12, base_resolution=8, max_resolution=32, hidden_dim=16,
                  samples_per_ray=32, occ_resolution=16)
"""A small NeRF: levels 8 and 11 dense, 16 and 32 hashed."""


def tiny_config(*extra: str) -> tuple[ComponentNames, RunConfig]:
    """(names, cfg) of a run that takes a second or two."""
    return parse_run_args([*TINY_FLAGS, *extra])


def run_for(names: ComponentNames, cfg: RunConfig, run_dir: Optional[Path] = None, plan: Optional[list[Stage]] = None) -> Run:
    """A run of `plan` (default: the single stage `cfg`) in `run_dir` (default: a new folder under
    cfg.out), its first stage built; the plan is not validated and config.yaml is written."""
    plan = plan or single_stage(names, cfg)
    run_dir = run_dir or new_run_dir(cfg.out, cfg.prompt, names.guidance, names.representation)
    run = Run(plan, run_dir)
    run.save_config()
    return run


def trainer_for(names: ComponentNames, cfg: RunConfig, run_dir: Optional[Path] = None, plan: Optional[list[Stage]] = None) -> StageTrainer:
    """The first stage's trainer of `run_for(...)`."""
    return run_for(names, cfg, run_dir, plan).trainer


# ---------------------------------------------------------------------- the command line
def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`threedistill ARGS` in this process, as a subprocess would report it: the exit code, stdout
    and stderr, and an exception escaping `main` rendered as its traceback on stderr (exit 1).
    Saves a Python start and the imports per call; `run_cli_process` runs the real console script."""
    import contextlib
    import io
    import traceback

    from threedistill.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse / tyro exits
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # what the interpreter would print
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(["threedistill", *args], code, out.getvalue(), err.getvalue())


def run_cli_process(*args: str, cwd: Path | None = None, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    """`python -m threedistill.cli ARGS` in a fresh process (what a user's shell runs)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "threedistill.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The `error:` lines of stderr (a run prints its folder first), after checking there is no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


FUZZ = {"cases": 0, "tracebacks": 0}
"""Generated bad inputs tried in this test session (tests/test_bad_inputs.py); conftest prints it."""


# ---------------------------------------------------------------------- injected faults
def fill_disk_for(monkeypatch, names: "set[str] | Callable[[Path], bool]", after: int = 0) -> list[Path]:
    """Writes (through core/atomic.py) of files named in `names` (or for which `names(path)` is true)
    hit a full disk from the `after`+1-th on: their temporary file is a link to /dev/full, so the
    kernel itself answers ENOSPC to whatever library writes it. Returns the targets that failed."""
    import threedistill.core.atomic as atomic

    real = atomic.temporary_beside
    failed: list[Path] = []
    seen = {"n": 0}

    def temporary(target: Path) -> Path:
        tmp = real(target)
        if (names(target) if callable(names) else target.name in names):
            seen["n"] += 1
            if seen["n"] > after:
                tmp.unlink()
                tmp.symlink_to("/dev/full")
                failed.append(target)
        return tmp

    monkeypatch.setattr(atomic, "temporary_beside", temporary)
    return failed


KILL_CHILD = """
import os, signal, sys
target, nth = sys.argv[1], int(sys.argv[2])
real_replace, count = os.replace, [0]

def replace(src, dst):  # a SIGKILL half-way through writing `target` for the nth time
    if os.path.basename(dst) == target:
        count[0] += 1
        if count[0] == nth:
            os.truncate(src, os.path.getsize(src) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

os.replace = replace
import torch
torch.set_num_threads(1)
from threedistill.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_killed_while_writing(target: str, nth: int, *args: str) -> subprocess.CompletedProcess:
    """`threedistill ARGS` in a child process SIGKILLed half-way through its nth write of a file named `target`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", KILL_CHILD, target, str(nth), *args], capture_output=True, text=True, env=env,
                          timeout=300)


# ---------------------------------------------------------------------- a prior with known predictions
class KnownEpsPrior:
    """encode = identity; eps(x_t, t, emb) = emb_value * ones + slope * x_t.

    Embeddings are scalars, so cond / uncond / null predictions differ in a known way.
    """

    num_train_timesteps = 1000
    resolution = 8
    view_group = 1
    device = torch.device("cpu")
    model_id = None

    def __init__(self, slope: float = 0.0, defaults: Optional[GuidanceDefaults] = None) -> None:
        self.alphas_cumprod = scaled_linear_alphas_cumprod()
        self.slope = slope
        self.defaults = defaults or GuidanceDefaults(cfg_scale=1.0, min_step=20, max_step=980)
        self.calls = 0

    def encode(self, images: Tensor) -> Tensor:
        return images

    def decode(self, x0: Tensor) -> Tensor:
        return x0

    def embed(self, texts: list[str]) -> Tensor:
        return torch.tensor([float(len(t)) for t in texts])

    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras=None) -> Tensor:
        self.calls += 1
        return emb.view(-1, *([1] * (x_t.ndim - 1))).to(x_t) + self.slope * x_t


# ---------------------------------------------------------------------- tiny diffusers pipelines
Kind = Literal["sd1", "sd2v", "sdxl"]
HIDDEN = 32
TIME_EMBED_DIM = 8  # SDXL addition_time_embed_dim


def _tokenizer(folder: Path, max_length: int = 16):
    from transformers import CLIPTokenizer

    write_byte_tokenizer(folder, max_length)
    return CLIPTokenizer.from_pretrained(str(folder))


def _text_encoder(vocab_size: int, projection: bool, seed: int, max_length: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=max_length, projection_dim=HIDDEN,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _unet(kind: Kind, seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    extra: dict = {}
    cross = HIDDEN
    if kind == "sdxl":
        cross = 2 * HIDDEN
        extra = dict(
            addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=HIDDEN + 6 * TIME_EMBED_DIM,
            transformer_layers_per_block=(1, 1),
        )
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross,
        attention_head_dim=(2, 4) if kind != "sd1" else 8, norm_num_groups=32,
        use_linear_projection=kind != "sd1", **extra,
    ).eval()


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=64,
    ).eval()


def _scheduler(kind: Kind):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        prediction_type="v_prediction" if kind == "sd2v" else "epsilon",
    )


KINDS = ("sd1", "sd2v", "sdxl")


def build_tiny_pipeline(path: Path | str, kind: Kind = "sd1"):
    """The tiny pipeline object (not saved); tokenizer files go under `path/_tok*`."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(path)
    tok = _tokenizer(path.parent / f"_tok_{path.name}")
    common = dict(unet=_unet(kind, 0), vae=_vae(1), text_encoder=_text_encoder(len(tok), False, 2),
                  tokenizer=tok, scheduler=_scheduler(kind))
    if kind == "sdxl":
        return StableDiffusionXLPipeline(text_encoder_2=_text_encoder(len(tok), True, 3), tokenizer_2=tok, **common)
    return StableDiffusionPipeline(safety_checker=None, feature_extractor=None, requires_safety_checker=False, **common)


def build_tiny_sd(path: Path | str, kind: Kind = "sd1") -> Path:
    """Write a tiny, deterministic SD-shaped diffusers pipeline of `kind` to `path`."""
    path = Path(path)
    build_tiny_pipeline(path, kind).save_pretrained(str(path))
    return path


def build_tiny_ip2p(path: Path | str) -> Path:
    """Write a tiny, deterministic StableDiffusionInstructPix2PixPipeline folder to `path`."""
    from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel

    path = Path(path)
    sd = build_tiny_pipeline(path, "sd1")
    torch.manual_seed(4)
    unet = UNet2DConditionModel.from_config({**sd.unet.config, "in_channels": 8}).eval()
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=unet, scheduler=sd.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path))
    return path


def _unet3d(seed: int):
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed)
    return UNet3DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=HIDDEN, attention_head_dim=4, norm_num_groups=32,
    ).eval()


def build_tiny_t2v_pipeline(path: Path | str):
    """The tiny pipeline object (not saved); tokenizer files go under `path/../_tok_<name>`."""
    from diffusers import TextToVideoSDPipeline

    path = Path(path)
    tok = _tokenizer(path.parent / f"_tok_{path.name}")
    return TextToVideoSDPipeline(vae=_vae(1), text_encoder=_text_encoder(len(tok), False, 2), tokenizer=tok,
                                 unet=_unet3d(0), scheduler=_scheduler("sd1"))


def build_tiny_t2v(path: Path | str) -> Path:
    """Write a tiny, deterministic text-to-video diffusers pipeline to `path`."""
    path = Path(path)
    build_tiny_t2v_pipeline(path).save_pretrained(str(path))
    return path


# ---------------------------------------------------------------------- tiny priors beyond Stable Diffusion
def _write_model_index(path: Path, index: dict) -> None:
    import json

    import diffusers

    (path / "model_index.json").write_text(json.dumps({**index, "_diffusers_version": diffusers.__version__}, indent=2))


TINY_MVDREAM_UNET = dict(image_size=8, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1,
                         attention_resolutions=[1, 2], channel_mult=[1, 2], num_head_channels=16, context_dim=HIDDEN,
                         camera_dim=16, transformer_depth=1, use_checkpoint=False, legacy=False)
"""A tiny MVDream UNet config in the public checkpoint's config layout (extra keys as the public config.json has them)."""


def build_tiny_mvdream(path: Path | str) -> Path:
    """Write a tiny MVDream folder in the public diffusers-format layout (ashawkey/mvdream-sd2.1-diffusers):
    model_index.json naming MVDreamPipeline and its component folders, the UNet a MultiViewUNetModel."""
    from threedistill.priors.diffusers.mv_unet import MultiViewUNetModel

    path = Path(path)
    tok = _tokenizer(path.parent / f"_tok_{path.name}")
    torch.manual_seed(5)
    unet = MultiViewUNetModel.from_config(TINY_MVDREAM_UNET).eval()
    parts = dict(unet=unet, vae=_vae(1), text_encoder=_text_encoder(len(tok), False, 2), tokenizer=tok, scheduler=_scheduler("sd1"))
    for name, part in parts.items():
        part.save_pretrained(str(path / name))
    _write_model_index(path, {
        "_class_name": "MVDreamPipeline", "feature_extractor": [None, None], "image_encoder": [None, None],
        "requires_safety_checker": False, "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["mv_unet", "MultiViewUNetModel"], "vae": ["diffusers", "AutoencoderKL"],
    })
    return path


def build_tiny_zero123(path: Path | str, layout: Literal["ashawkey", "kxic"] = "ashawkey") -> Path:
    """Write a tiny Zero123 folder in a public diffusers-format layout: ashawkey/zero123-xl-diffusers
    (`clip_camera_projection`, Zero123Pipeline) or kxic/zero123-xl-diffusers (`cc_projection`)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from threedistill.priors.diffusers.zero123 import CCProjection, CLIPCameraProjection

    path = Path(path)
    torch.manual_seed(6)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
        projection_dim=HIDDEN)).eval()
    unet = UNet2DConditionModel.from_config({**_unet("sd1", 0).config, "in_channels": 8}).eval()
    name, projection = (("clip_camera_projection", CLIPCameraProjection(HIDDEN, 4)) if layout == "ashawkey"
                        else ("cc_projection", CCProjection(HIDDEN + 4, HIDDEN)))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    parts = dict(vae=_vae(1), image_encoder=encoder, unet=unet, scheduler=_scheduler("sd1"), feature_extractor=processor)
    parts[name] = projection
    for part_name, part in parts.items():
        part.save_pretrained(str(path / part_name))
    module = "pipeline_zero123" if layout == "ashawkey" else "pipeline_zero1to3"
    _write_model_index(path, {
        "_class_name": "Zero123Pipeline" if layout == "ashawkey" else "Zero1to3StableDiffusionPipeline",
        "vae": ["diffusers", "AutoencoderKL"], "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDIMScheduler"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"], name: [module, type(projection).__name__],
        "requires_safety_checker": False, "safety_checker": [None, None],
    })
    return path


def _t5_tokenizer(folder: Path):
    """A T5 (Unigram) tokenizer over single characters, written without sentencepiece (transformers 5)."""
    from transformers import T5Tokenizer

    pieces = [chr(c) for c in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(p, -3.0) for p in pieces] + [("\u2581" + p, -2.5) for p in pieces]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0)
    tok.save_pretrained(str(folder))
    return T5Tokenizer.from_pretrained(str(folder))


def build_tiny_if(path: Path | str) -> Path:
    """Write a tiny DeepFloyd IF stage-I folder (IFPipeline layout: T5 encoder, 3-in / 6-out pixel UNet with
    text projection and scale-shift resnets, DDPM with learned variance), without the safety checker."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    path = Path(path)
    tok = _t5_tokenizer(path.parent / f"_t5_{path.name}")
    torch.manual_seed(7)
    encoder = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=HIDDEN, d_kv=8, d_ff=37, num_layers=2, num_heads=4)).eval()
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        cross_attention_dim=32, encoder_hid_dim=HIDDEN, encoder_hid_dim_type="text_proj", addition_embed_type="text",
        addition_embed_type_num_heads=4, attention_head_dim=8, resnet_time_scale_shift="scale_shift", norm_num_groups=32,
        act_fn="gelu",
    ).eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                              prediction_type="epsilon", thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5)
    IFPipeline(tokenizer=tok, text_encoder=encoder, unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
               watermarker=None, requires_safety_checker=False).save_pretrained(str(path))
    return path


def build_tiny_controlnet(path: Path | str, sd_folder: Path, conditioning_channels: int = 3) -> Path:
    """Write a tiny diffusers ControlNetModel made from the tiny SD 1.x pipeline's UNet (`from_unet`)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(8)
    unet = UNet2DConditionModel.from_pretrained(str(sd_folder), subfolder="unet")
    net = ControlNetModel.from_unet(unet, conditioning_channels=conditioning_channels, conditioning_embedding_out_channels=(8, 16, 16, 16))
    with torch.no_grad():  # diffusers zero-initialises the output convolutions: give them weights so the residuals matter
        for p in net.parameters():
            if not p.abs().sum():
                p.normal_(0.0, 0.05)
    net.save_pretrained(str(path))
    return Path(path)


# ---------------------------------------------------------------------- mesh files as other tools write them
def write_glb(path: Path, primitives: list[dict], textures: tuple = ()) -> Path:
    """A binary glTF 2.0 file written by hand, as exporters write them: one node per primitive
    (`translation`/`scale`/`rotation` optional), POSITION, indices, optional COLOR_0 (`color0`,
    float VEC3/VEC4, or normalised uint16 VEC4 with `color0_uint16` as Blender writes it) and
    TEXCOORD_0 (`uv`, glTF's v-down convention), a material with `factor` (baseColorFactor) and/or
    `texture` (an index into `textures`, RGB uint8 arrays stored as PNG)."""
    import json
    import struct

    import imageio.v3 as iio
    import numpy as np

    blob = bytearray()
    views: list[dict] = []
    accessors: list[dict] = []

    def view(data: bytes, target: Optional[int] = None) -> int:
        blob.extend(b"\0" * (-len(blob) % 4))
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(data), **({"target": target} if target else {})})
        blob.extend(data)
        return len(views) - 1

    def accessor(array: "np.ndarray", kind: str, component: int, target: int, bounds: bool = False, normalized: bool = False) -> int:
        entry = {"bufferView": view(np.ascontiguousarray(array).tobytes(), target), "componentType": component,
                 "count": int(array.shape[0]), "type": kind, **({"normalized": True} if normalized else {})}
        if bounds:
            entry.update(min=array.min(0).tolist(), max=array.max(0).tolist())
        accessors.append(entry)
        return len(accessors) - 1

    images = [{"bufferView": view(iio.imwrite("<bytes>", t, extension=".png")), "mimeType": "image/png"} for t in textures]
    meshes, nodes, materials = [], [], []
    for p in primitives:
        attributes = {"POSITION": accessor(np.asarray(p["vertices"], np.float32), "VEC3", 5126, 34962, bounds=True)}
        if p.get("color0") is not None:
            colour = np.asarray(p["color0"], np.float32)
            kind = "VEC4" if colour.shape[1] == 4 else "VEC3"
            if p.get("color0_uint16"):
                attributes["COLOR_0"] = accessor(np.round(colour * 65535).astype(np.uint16), kind, 5123, 34962, normalized=True)
            else:
                attributes["COLOR_0"] = accessor(colour, kind, 5126, 34962)
        if p.get("uv") is not None:
            attributes["TEXCOORD_0"] = accessor(np.asarray(p["uv"], np.float32), "VEC2", 5126, 34962)
        primitive = {"attributes": attributes,
                     "indices": accessor(np.asarray(p["faces"], np.uint32).reshape(-1), "SCALAR", 5125, 34963)}
        if p.get("material") is not None:
            m = p["material"]
            pbr = {**({"baseColorFactor": [float(x) for x in m["factor"]]} if "factor" in m else {}),
                   **({"baseColorTexture": {"index": m["texture"]}} if "texture" in m else {})}
            materials.append({"pbrMetallicRoughness": pbr})
            primitive["material"] = len(materials) - 1
        meshes.append({"primitives": [primitive]})
        nodes.append({"mesh": len(meshes) - 1, **{k: [float(x) for x in p[k]] for k in ("translation", "scale", "rotation") if k in p}})
    gltf: dict = {"asset": {"version": "2.0", "generator": "threedistill tests"}, "scene": 0,
                  "scenes": [{"nodes": list(range(len(nodes)))}], "nodes": nodes, "meshes": meshes, "accessors": accessors,
                  "bufferViews": views, "buffers": [{"byteLength": len(blob) + (-len(blob) % 4)}]}
    if materials:
        gltf["materials"] = materials
    if images:
        gltf.update(images=images, samplers=[{"magFilter": 9728, "minFilter": 9728}],
                    textures=[{"source": i, "sampler": 0} for i in range(len(images))])
    text = json.dumps(gltf).encode()
    text += b" " * (-len(text) % 4)
    blob.extend(b"\0" * (-len(blob) % 4))
    size = 12 + 8 + len(text) + 8 + len(blob)
    path.write_bytes(struct.pack("<III", 0x46546C67, 2, size) + struct.pack("<II", len(text), 0x4E4F534A) + text
                     + struct.pack("<II", len(blob), 0x004E4942) + bytes(blob))
    return path


def two_colour_texture(size: int = 16) -> "np.ndarray":
    """An RGB texture, red on its left half and blue on its right half (uint8 [size, size, 3])."""
    import numpy as np

    texture = np.zeros((size, size, 3), np.uint8)
    texture[:, : size // 2] = (255, 0, 0)
    texture[:, size // 2:] = (0, 0, 255)
    return texture


# ---------------------------------------------------------------------- real clients: a browser, node
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
"""Headless Debian chromium with WebGL on SwiftShader (no GPU), nothing fetched from the network."""
NODE_PROJECT = Path(__file__).resolve().parent / "clients"
"""tests/clients: package.json + package-lock.json of the npm clients (`npm ci` there; .ci/run does it)."""


def require_client(available: bool, what: str) -> None:
    """Skip a test whose external client is not installed, except where THREEDISTILL_REQUIRE_CLIENTS=1
    (.ci/run sets it, so CI fails instead of skipping)."""
    import pytest

    if available:
        return
    if os.environ.get("THREEDISTILL_REQUIRE_CLIENTS") == "1":
        pytest.fail(f"{what} is not installed (THREEDISTILL_REQUIRE_CLIENTS=1); run .ci/run's set-up")
    pytest.skip(f"{what} is not installed")


def browser_page(width: int = 1000, height: int = 700):
    """A context manager yielding a playwright page in headless chromium (CHROMIUM_FLAGS, a fresh
    profile); skipped (or failed, see require_client) without chromium and playwright."""
    import contextlib
    import importlib.util
    import tempfile

    require_client(CHROMIUM.exists() and importlib.util.find_spec("playwright") is not None, "chromium + playwright")

    @contextlib.contextmanager
    def page():
        from playwright.sync_api import sync_playwright

        with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True,
                                                           args=CHROMIUM_FLAGS, viewport={"width": width, "height": height})
            try:
                yield browser.pages[0] if browser.pages else browser.new_page()
            finally:
                browser.close()
    return page()


class CliProcess:
    """A `threedistill` command running in the background; stderr is drained on a thread (so the
    process never blocks on a full pipe) and searched for the viewer's URL."""

    def __init__(self, *args: str, cwd: Optional[Path] = None) -> None:
        import threading

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "threedistill.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr or []), daemon=True)
        self._reader.start()

    def url(self, timeout: float = 120.0) -> str:
        import re
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                found = re.search(r"viewer: (http://127\.0\.0\.1:\d+)", line)
                if found:
                    return found.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError("the viewer did not start:\n" + "".join(self.lines))

    def finish(self, timeout: float = 120.0) -> tuple[int, str, str]:
        """Wait for the exit: (code, stdout, stderr). (Not communicate(): it would read stderr too, taking
        lines from the thread that drains it.)"""
        self.proc.wait(timeout=timeout)  # stdout holds a line or two: no pipe fills up meanwhile
        out = self.proc.stdout.read() if self.proc.stdout is not None else ""
        self._reader.join(timeout=60)  # the rest of stderr (a busy machine can starve this thread)
        return self.proc.returncode, out, "".join(self.lines)

    def interrupt(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
