"""A tiny text-to-video pipeline built from configs (the video twin of sd_fixtures.py).

`build_tiny_t2v(path)` writes a complete `TextToVideoSDPipeline` folder (UNet3DConditionModel,
the tiny SD VAE with a real x8 factor, CLIP text encoder, byte-level CLIP tokenizer, DDIM
scheduler) with seeded random weights, so tests load it through the production loader.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sd_fixtures import HIDDEN, _scheduler, _text_encoder, _tokenizer, _vae


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
