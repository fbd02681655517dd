"""Training backgrounds: solid (unchanged), random colour per view, learnt MLP."""

from __future__ import annotations

from pathlib import Path

import torch

from support import tiny_config, trainer_for
from threedistill.core.cameras import scene_cameras
from threedistill.render.background import Background
from threedistill.core.types import RenderOutput

WHITE = torch.ones(3)


def _half_covered(cams) -> RenderOutput:
    alpha = torch.zeros(len(cams), 1, 8, 8)
    alpha[..., :4] = 1.0
    colour = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    return RenderOutput(rgb=alpha * colour + (1 - alpha) * WHITE.view(1, 3, 1, 1), alpha=alpha, depth=alpha)


def test_solid_is_the_identity_and_random_replaces_only_the_background() -> None:
    cams = scene_cameras(3, 8)
    out = _half_covered(cams)
    assert Background("solid", WHITE, 1e-3, torch.Generator()).composite(out, cams) is out
    random = Background("random", WHITE, 1e-3, torch.Generator().manual_seed(0)).composite(out, cams)
    assert torch.equal(random.rgb[..., :4], out.rgb[..., :4])
    bg = random.rgb[..., 4:]
    assert torch.allclose(bg, bg[..., :1, :1].expand_as(bg)) and not torch.allclose(bg[0], bg[1])


def test_mlp_background_is_learnt(tmp_path: Path) -> None:
    names, cfg = tiny_config("--out", str(tmp_path), "--render.background-mode", "mlp", "--render.background-lr", "0.05", "--steps", "3")
    trainer = trainer_for(names, cfg)
    before = [p.detach().clone() for p in trainer.backdrop.parameters()]
    assert trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.backdrop.parameters()))
    assert "background" in trainer.checkpoint_state()
