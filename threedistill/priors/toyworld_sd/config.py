"""What toyworld-sd is trained on, its architecture and its optimisation (training.py uses it)."""

from __future__ import annotations

from dataclasses import dataclass

from ..toyworld.catalogue import CATALOGUE, COLOURS


@dataclass
class TrainConfig:
    """What toyworld-sd is trained on, its architecture and its optimisation."""

    seed: int = 0
    objects: tuple[str, ...] = tuple(CATALOGUE)
    colours: tuple[str, ...] = tuple(COLOURS)
    views: int = 64
    """Training renders per (object, colour)."""
    holdout_views: int = 4
    """Further renders per (object, colour), never trained on: the held-out denoising error."""
    resolution: int = 64
    vae_channels: tuple[int, ...] = (16, 32, 32)
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_channels: tuple[int, ...] = (48, 96, 96)
    text_hidden: int = 64
    text_layers: int = 3
    max_length: int = 48
    unet_steps: int = 5000
    unet_batch: int = 48
    unet_lr: float = 5e-4
    warmup: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    """Share of empty captions (the unconditional model CFG needs)."""
    plain_caption: float = 0.1
    """Share of captions without a view phrase."""
    prefix_form: float = 0.2
    """Share of view phrases in the prefix form ('side view of a red mug')."""
    checkpoint_every: int = 250
