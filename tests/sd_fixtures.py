"""Tiny Stable-Diffusion-shaped pipelines built from configs (DESIGN.md section 9).

`build_tiny_sd(path, kind)` writes a complete diffusers folder (UNet, VAE with a real x8
scale factor, CLIP text encoder(s), a byte-level CLIP tokenizer, scheduler) with seeded
random weights, so tests load it through the same code path as a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from threedistill.priors.diffusers.byte_tokenizer import write_byte_tokenizer

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
