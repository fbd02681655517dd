"""toyworld-sd's training data: catalogue renders in every colour word, and their captions."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ...core.cameras import VIEW_LABELS, OrbitSampler, OrbitSamplerConfig, view_label_indices, view_phrase
from ..toyworld.catalogue import CATALOGUE, resolve_prompt
from ..toyworld.prior import render_ground_truth
from .config import TrainConfig


def article(words: str) -> str:
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def colourless_colours(name: str) -> tuple[str, ...]:
    """The colours the prompt without a colour word ("a mug") stands for."""
    spec = CATALOGUE[name]
    return tuple(spec.modes) or ((spec.default_colour,) if spec.default_colour else ())


@dataclass
class Dataset:
    """Renders [N,3,R,R] uint8, with the (object, colour) pair and view label of each."""

    images: Tensor
    pair: Tensor
    """Index into `pairs` [N]."""
    label: Tensor
    """Index into VIEW_LABELS [N]."""
    holdout: Tensor
    """True for held-out renders [N]."""
    pairs: list[tuple[str, str]]

    def prompts(self, i: int) -> list[str]:
        """The prompts that name render i's object: with its colour word, and without when that is its default."""
        name, colour = self.pairs[int(self.pair[i])]
        out = [article(f"{colour} {name}")]
        if colour in colourless_colours(name):
            out.append(article(name))
        return out


def render_dataset(config: TrainConfig, progress: Optional[Callable[[int, int], None]] = None) -> Dataset:
    """Seeded renders of every (object, colour) from the training camera distribution."""
    sampler = OrbitSampler(OrbitSamplerConfig(width=config.resolution, height=config.resolution))
    gen = torch.Generator().manual_seed(config.seed)
    pairs = [(name, colour) for name in config.objects for colour in config.colours]
    images, pair_idx, labels, holdout = [], [], [], []
    per_pair = config.views + config.holdout_views
    for k, (name, colour) in enumerate(pairs):
        mesh = resolve_prompt(article(f"{colour} {name}"))[0]
        cams = sampler.sample(gen, batch_size=per_pair)
        rgb = render_ground_truth(mesh, cams, torch.device("cpu")).rgb
        images.append((rgb.clamp(0, 1) * 255).round().to(torch.uint8))
        pair_idx.append(torch.full((per_pair,), k, dtype=torch.long))
        labels.append(view_label_indices(cams))
        holdout.append(torch.arange(per_pair) >= config.views)
        if progress is not None:
            progress(k + 1, len(pairs))
    return Dataset(torch.cat(images), torch.cat(pair_idx), torch.cat(labels), torch.cat(holdout), pairs)


def sample_captions(data: Dataset, rows: Tensor, config: TrainConfig, rng: random.Random) -> list[str]:
    """One caption per render: dropout '', the plain prompt, or a view phrase in either form."""
    out = []
    for i in rows.tolist():
        u = rng.random()
        if u < config.caption_dropout:
            out.append("")
            continue
        prompt = rng.choice(data.prompts(i))
        if u < config.caption_dropout + config.plain_caption:
            out.append(prompt)
        else:
            form = "prefix" if rng.random() < config.prefix_form else "suffix"
            out.append(view_phrase(prompt, VIEW_LABELS[int(data.label[i])], form))
    return out


def to_unit(images: Tensor) -> Tensor:
    """uint8 renders -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0
