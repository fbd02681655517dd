"""A tiny randomly initialised InstructPix2Pix pipeline (DESIGN.md section 9).

It reuses `sd_fixtures`' tiny SD 1.x components and swaps in a UNet of the same architecture
taking 8 input channels (noisy latent + image-conditioning latent), as InstructPix2Pix does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sd_fixtures import build_tiny_pipeline


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
