"""InstructPix2Pix editor (Instruct-NeRF2NeRF dataset update) on a tiny random pipeline, on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from threedistill.core.errors import UserError
from threedistill.priors.diffusers.instruct_pix2pix import InstructPix2PixConfig, InstructPix2PixEditor

from support import build_tiny_ip2p


@pytest.fixture(scope="module")
def editor(tmp_path_factory: pytest.TempPathFactory) -> InstructPix2PixEditor:
    path = build_tiny_ip2p(tmp_path_factory.mktemp("tiny-ip2p") / "ip2p")
    return InstructPix2PixEditor.load(InstructPix2PixConfig(model=str(path), steps=3), "cpu")


def test_two_in2n_updates(editor: InstructPix2PixEditor) -> None:
    assert editor.unet.config.in_channels == 8 and not any(p.requires_grad for p in editor.unet.parameters())
    g = torch.Generator().manual_seed(0)
    original = torch.rand(2, 3, 32, 32, generator=g)
    current = original.clone()
    for step in range(2):  # two iterative dataset updates: each edits the current views, conditioned on the originals
        edited = editor.edit(current, original, "make it blue", torch.Generator().manual_seed(step))
        assert edited.shape == current.shape and torch.isfinite(edited).all()
        assert edited.min() >= 0 and edited.max() <= 1
        assert (edited - current).abs().mean() > 1e-3
        current = edited
    again = editor.edit(original, original, "make it blue", torch.Generator().manual_seed(0))
    first = editor.edit(original, original, "make it blue", torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, first)  # one generator -> one result


def test_odd_size_is_resized_back(editor: InstructPix2PixEditor) -> None:
    image = torch.rand(1, 3, 20, 28)
    assert editor.edit(image, image, "x", torch.Generator().manual_seed(1)).shape == (1, 3, 20, 28)


@pytest.mark.parametrize("model,needle", [("/nonexistent/ip2p", "does not exist"), ("nobody/no-such-ip2p-model", "not in the local")])
def test_missing_model_is_one_line_error(model: str, needle: str) -> None:
    with pytest.raises(UserError) as info:
        InstructPix2PixEditor.load(InstructPix2PixConfig(model=model), "cpu")
    message = str(info.value)
    assert "\n" not in message and needle in message and "--guidance.model" in message, message


def test_plain_sd_is_refused(tiny_sd: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="not a StableDiffusionInstructPix2PixPipeline"):
        InstructPix2PixEditor.load(InstructPix2PixConfig(model=str(tiny_sd["sd1"])), "cpu")


def test_update_schedule_and_conditioning(editor: InstructPix2PixEditor, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    unet = editor.unet

    def recording(x: torch.Tensor, t: torch.Tensor, **kwargs):
        calls.append((x.clone(), t.clone()))
        return unet(x, t, **kwargs)

    monkeypatch.setattr(editor, "unet", recording)
    original, current = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    editor.edit(current, original, "x", torch.Generator().manual_seed(3))
    assert len(calls) == editor.config.steps
    ts = [int(t[0]) for _, t in calls]
    assert 700 <= ts[0] <= 980 and ts == sorted(ts, reverse=True) and ts[-1] > 0
    cond = editor.vae.encode(original * 2 - 1).latent_dist.mode()
    for x, t in calls:
        assert x.shape == (3, 8, 4, 4) and t.shape == (3,)
        torch.testing.assert_close(x[:2, 4:], cond.expand(2, -1, -1, -1))  # text+image and image-only rows
        assert x[2, 4:].eq(0).all()  # the unconditional row has no image
        torch.testing.assert_close(x[0, :4], x[2, :4])
