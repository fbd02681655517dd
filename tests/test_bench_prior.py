"""tools/bench_prior.py --prior ... --small: every prior beyond SD is built in its public layout, loaded through its
production loader and takes whole SDS steps with a finite image gradient (the GPU numbers come from --device cuda)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def test_bench_prior_small_runs_every_prior(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TOOLS))
    import bench_prior

    bench_prior.main(["--device", "cpu", "--small", "--repeats", "1", "--prior", "mvdream,zero123,deepfloyd-if,controlnet"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and not line.startswith("| prior")]
    assert [r.split("|")[1].strip() for r in rows] == ["mvdream", "zero123", "deepfloyd-if", "controlnet"]
    assert all(r.rstrip(" |").endswith("True") for r in rows), rows
    assert "4 x 64 px" in rows[0]  # MVDream scores whole groups of 4 views
    sys.modules.pop("bench_prior", None)
    sys.modules.pop("bench_prior_others", None)
