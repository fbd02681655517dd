"""toyworld-sd's training data: catalogue renders in every colour word, and their captions."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ...core.cameras import VIEW_LABELS, Cameras, OrbitSampler, OrbitSamplerConfig, concat_cameras, view_label_indices, view_phrase
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
    """Renders [N,3,R,R] uint8, with the (object, colour) pair, view label and camera of each.

    Every camera is drawn up front, in the seeded order; images are rendered when first asked
    for (`image_rows`), so a few training steps need only the renders they draw.
    """

    images: Tensor
    """uint8 [N,3,R,R]; zero where `rendered` is False."""
    pair: Tensor
    """Index into `pairs` [N]."""
    label: Tensor
    """Index into VIEW_LABELS [N]."""
    holdout: Tensor
    """True for held-out renders [N]."""
    pairs: list[tuple[str, str]]
    cameras: Optional[Cameras] = None
    """Every row's camera (None for a dataset read back fully rendered)."""
    rendered: Optional[Tensor] = None
    """bool [N]: rows whose image exists (None: all of them)."""

    def prompts(self, i: int) -> list[str]:
        """The prompts that name render i's object: with its colour word, and without when that is its default."""
        name, colour = self.pairs[int(self.pair[i])]
        out = [article(f"{colour} {name}")]
        if colour in colourless_colours(name):
            out.append(article(name))
        return out

    @property
    def complete(self) -> bool:
        return self.rendered is None or bool(self.rendered.all())

    def image_rows(self, rows: Tensor) -> Tensor:
        """uint8 images of `rows`, rendering the ones not rendered yet (one batch per object and colour)."""
        if not self.complete:
            self.render(rows)
        return self.images[rows]

    def render(self, rows: Optional[Tensor] = None, progress: Optional[Callable[[int, int], None]] = None) -> None:
        """Render `rows` (default: every row) that are not rendered yet."""
        if self.rendered is None:
            return
        assert self.cameras is not None
        wanted = torch.zeros_like(self.rendered)
        wanted[torch.arange(len(wanted)) if rows is None else rows] = True
        wanted &= ~self.rendered
        todo = wanted.nonzero().squeeze(1)
        groups = self.pair[todo].unique().tolist()
        for n, k in enumerate(groups):
            idx = todo[self.pair[todo] == k]
            name, colour = self.pairs[k]
            mesh = resolve_prompt(article(f"{colour} {name}"))[0]
            rgb = render_ground_truth(mesh, self.cameras[idx], torch.device("cpu")).rgb
            self.images[idx] = (rgb.clamp(0, 1) * 255).round().to(torch.uint8)
            self.rendered[idx] = True
            if progress is not None:
                progress(n + 1, len(groups))


def plan_dataset(config: TrainConfig) -> Dataset:
    """Every row's camera, pair, view label and split, from the seed; nothing rendered yet."""
    sampler = OrbitSampler(OrbitSamplerConfig(width=config.resolution, height=config.resolution))
    gen = torch.Generator().manual_seed(config.seed)
    pairs = [(name, colour) for name in config.objects for colour in config.colours]
    cams, pair_idx, labels, holdout = [], [], [], []
    per_pair = config.views + config.holdout_views
    for k in range(len(pairs)):
        c = sampler.sample(gen, batch_size=per_pair)
        cams.append(c)
        pair_idx.append(torch.full((per_pair,), k, dtype=torch.long))
        labels.append(view_label_indices(c))
        holdout.append(torch.arange(per_pair) >= config.views)
    n = per_pair * len(pairs)
    images = torch.zeros(n, 3, config.resolution, config.resolution, dtype=torch.uint8)
    return Dataset(images, torch.cat(pair_idx), torch.cat(labels), torch.cat(holdout), pairs,
                   cameras=concat_cameras(cams), rendered=torch.zeros(n, dtype=torch.bool))


def render_dataset(config: TrainConfig, progress: Optional[Callable[[int, int], None]] = None) -> Dataset:
    """Seeded renders of every (object, colour) from the training camera distribution."""
    data = plan_dataset(config)
    data.render(progress=progress)
    return data


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
