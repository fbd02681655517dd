"""View-dependent prompts: labels, phrase forms, interpolation, the embedding cache, toyworld phrases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from threedistill.core.cameras import (
    VIEW_LABEL_ANGLES,
    VIEW_LABELS,
    OrbitSamplerConfig,
    orbit_cameras,
    split_view_phrase,
    view_direction_labels,
    view_phrase,
)
from threedistill.core.errors import UserError
from threedistill.priors.base import GuidanceDefaults
from threedistill.priors.toyworld.prior import ReferenceSet, ToyworldConfig, ToyworldPrior
from threedistill.priors.prompts import PromptConfig, PromptEmbedder


def _cams(elevation: list[float], azimuth: list[float]):
    n = len(azimuth)
    return orbit_cameras(torch.tensor(elevation), torch.tensor(azimuth), torch.full((n,), 3.0), torch.full((n,), 40.0), 8, 8)


class FakePrior:
    """embed(text) -> one-hot over (front, side, back, overhead, other) plus a text-specific tail."""

    model_id = "fake"
    device = torch.device("cpu")
    defaults = GuidanceDefaults(cfg_scale=7.5, min_step=20, max_step=980, view_dependent_prompts=True)

    def __init__(self, model_id: str | None = "fake") -> None:
        self.model_id = model_id
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str]) -> Tensor:
        self.calls.append(list(texts))
        rows = []
        for text in texts:
            label = split_view_phrase(text)[1]
            row = torch.zeros(6)
            row[VIEW_LABELS.index(label) if label else 4] = 1.0
            row[5] = len(text)
            rows.append(row)
        return torch.stack(rows)


# ---------------------------------------------------------------- labels and phrases
@pytest.mark.parametrize(
    "el,az,label",
    [
        (0.0, 44.9, "front"), (0.0, 45.0, "front"), (0.0, 45.1, "side"), (0.0, -45.0, "front"), (0.0, -45.1, "side"),
        (0.0, 134.9, "side"), (0.0, 135.0, "back"), (0.0, -135.0, "back"), (0.0, 180.0, "back"), (0.0, 315.0, "front"),
        (60.0, 0.0, "front"), (60.1, 0.0, "overhead"), (60.1, 180.0, "overhead"),
    ],
)
def test_label_thresholds(el: float, az: float, label: str) -> None:
    assert view_direction_labels(_cams([el], [az]), PromptConfig()) == [label]


def test_custom_thresholds() -> None:
    cfg = PromptConfig(front_threshold=30.0, back_threshold=30.0, overhead_threshold=80.0)
    assert view_direction_labels(_cams([70.0, 0.0, 0.0], [0.0, 31.0, 149.0]), cfg) == ["front", "side", "side"]


def test_phrase_forms_round_trip() -> None:
    assert view_phrase("a corgi", "side") == "a corgi, side view"
    assert view_phrase("a corgi", "front", "prefix") == "front view of a corgi"
    for label in VIEW_LABELS:
        for form in ("suffix", "prefix"):
            assert split_view_phrase(view_phrase("a red mug", label, form)) == ("a red mug", label)
    assert split_view_phrase("a red mug") == ("a red mug", None)
    assert split_view_phrase("A Red Mug, Side View") == ("A Red Mug", "side")
    assert split_view_phrase("a mug with a view") == ("a mug with a view", None)


def test_embedder_uses_form_and_labels(tmp_path: Path) -> None:
    prior = FakePrior()
    emb = PromptEmbedder(prior, "a corgi", "ugly", config=PromptConfig(form="prefix", cache_dir=str(tmp_path)))
    assert prior.calls == [["front view of a corgi", "side view of a corgi", "back view of a corgi", "overhead view of a corgi", "a corgi", "ugly", ""]]
    out = emb.for_cameras(_cams([0.0, 0.0, 0.0, 70.0], [0.0, 90.0, 180.0, 0.0]))
    torch.testing.assert_close(out.cond[:, :4], torch.eye(4))
    assert out.uncond[:, 5].tolist() == [4.0] * 4 and out.null[:, 5].tolist() == [0.0] * 4


def test_not_view_dependent(tmp_path: Path) -> None:
    emb = PromptEmbedder(FakePrior(), "a corgi", view_dependent=False, config=PromptConfig(cache_dir=str(tmp_path)))
    out = emb.for_cameras(_cams([0.0, 70.0], [0.0, 180.0]))
    assert out.cond[:, 4].tolist() == [1.0, 1.0]


def test_interpolation_weights(tmp_path: Path) -> None:
    emb = PromptEmbedder(FakePrior(), "a corgi", config=PromptConfig(interpolate=True, cache_dir=str(tmp_path)))
    cond = emb.for_cameras(_cams([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 70.0], [0.0, 45.0, 90.0, 135.0, 180.0, -45.0, 45.0])).cond
    expected = torch.tensor(
        [[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 1, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 1, 0], [0.5, 0.5, 0, 0], [0, 0, 0, 1]]
    )
    torch.testing.assert_close(cond[:, :4], expected)


def test_interpolation_needs_float_embeddings(tmp_path: Path) -> None:
    prior = ToyworldPrior(ToyworldConfig(), OrbitSamplerConfig())
    with pytest.raises(UserError):
        PromptEmbedder(prior, "a red mug", view_dependent=True, config=PromptConfig(interpolate=True, cache_dir=str(tmp_path)))


# ---------------------------------------------------------------- disk cache
def test_disk_cache_hits_second_run(tmp_path: Path) -> None:
    cfg = PromptConfig(cache_dir=str(tmp_path))
    first = PromptEmbedder(FakePrior(), "a corgi", config=cfg)
    assert first.cache_hits == 0
    assert len(list((tmp_path / "embeddings").glob("*.pt"))) == 6  # 4 view phrases, the plain prompt, ""
    prior = FakePrior()
    second = PromptEmbedder(prior, "a corgi", config=cfg)
    assert second.cache_hits == 6 and prior.calls == []
    cams = _cams([0.0, 0.0, 70.0], [0.0, 100.0, 0.0])
    torch.testing.assert_close(second.for_cameras(cams).cond, first.for_cameras(cams).cond)

    other = FakePrior()
    third = PromptEmbedder(other, "a cat", config=cfg)  # new prompt: only "" (negative and null) hits
    assert third.cache_hits == 1 and other.calls == [[view_phrase("a cat", v) for v in VIEW_LABELS] + ["a cat"]]
    new_model = FakePrior("fake-2")
    fourth = PromptEmbedder(new_model, "a corgi", config=cfg)
    assert fourth.cache_hits == 0 and len(new_model.calls) == 1


def test_corrupt_cache_file_is_recomputed(tmp_path: Path) -> None:
    cfg = PromptConfig(cache_dir=str(tmp_path))
    reference = PromptEmbedder(FakePrior(), "a corgi", config=cfg).for_cameras(_cams([0.0], [0.0])).cond
    for path in (tmp_path / "embeddings").glob("*.pt"):
        path.write_bytes(b"not a tensor")
    prior = FakePrior()
    again = PromptEmbedder(prior, "a corgi", config=cfg)
    assert again.cache_hits == 0 and len(prior.calls) == 1
    torch.testing.assert_close(again.for_cameras(_cams([0.0], [0.0])).cond, reference)
    assert PromptEmbedder(FakePrior(), "a corgi", config=cfg).cache_hits == 6  # rewritten


def test_no_model_id_skips_disk_cache(tmp_path: Path) -> None:
    PromptEmbedder(FakePrior(model_id=None), "a corgi", config=PromptConfig(cache_dir=str(tmp_path)))
    assert not (tmp_path / "embeddings").exists()


def test_default_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THREEDISTILL_CACHE", str(tmp_path))
    assert PromptEmbedder(FakePrior(), "a corgi").cache_dir == tmp_path / "embeddings"


# ---------------------------------------------------------------- toyworld view phrases
def test_toyworld_accepts_view_phrases_and_shares_references() -> None:
    prior = ToyworldPrior(ToyworldConfig(), OrbitSamplerConfig())
    texts = ["a red mug", "a red mug, side view", "side view of a red mug", "a red mug, front view", "overhead view of a red mug"]
    ids = prior.embed(texts).tolist()
    assert ids[1] == ids[2] and len(set(ids)) == 4
    assert all(m.name == "red mug" for m in prior.modes("a red mug, back view"))
    assert {prior._set_of.get(i, i) for i in ids} == {ids[0]}
    with pytest.raises(UserError):
        prior.embed(["a red mug, sideways view"])


def test_toyworld_view_phrase_direction_without_cameras() -> None:
    prior = ToyworldPrior(ToyworldConfig(resolution=2, kappa=5.0), OrbitSamplerConfig())
    base, front, side = prior.embed(["a red cube", "a red cube, front view", "side view of a red cube"]).tolist()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 12, generator=g, dtype=torch.float64) * 2 - 1
    dirs = torch.nn.functional.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=-1)
    prior._sets[base] = ReferenceSet(x=x, sq_norm=(x * x).sum(1), dirs=dirs)
    x_t = torch.randn(2, 3, 2, 2, generator=g)
    t = torch.full((2,), 600)

    def cams(label: str):
        el, az = VIEW_LABEL_ANGLES[label]
        return _cams([el, el], [az, az])

    got_front = prior.predict_eps(x_t, t, torch.full((2,), front))
    torch.testing.assert_close(got_front, prior.predict_eps(x_t, t, torch.full((2,), base), cams("front")))
    torch.testing.assert_close(got_front, prior.predict_eps(x_t, t, torch.full((2,), front), cams("front")))
    got_side = prior.predict_eps(x_t, t, torch.full((2,), side))
    torch.testing.assert_close(got_side, prior.predict_eps(x_t, t, torch.full((2,), base), cams("side")))
    assert not torch.allclose(got_front, got_side)
    # without a view phrase and without cameras the kernel is off
    no_view = prior.predict_eps(x_t, t, torch.full((2,), base))
    assert not torch.allclose(no_view, got_front)
