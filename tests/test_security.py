"""Files from others are data, nothing reaches the network unless asked, user text stays inside --out.

- an audit of the source: every torch.load is weights_only, no pickle/marshal/unsafe YAML/eval,
  every from_pretrained / from_single_file / load_config passes local_files_only;
- caches and model weights that would run code when unpickled are refused, and the code never runs;
- every diffusers/transformers load path works with the network cut off, and only
  `--prior.allow-download` makes a request;
- prompts and stage names never make a path outside --out.
"""

from __future__ import annotations

import ast
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from support import TINY_FLAGS, error_lines, run_cli

PACKAGE = Path(__file__).resolve().parent.parent / "threedistill"
TOOLS = Path(__file__).resolve().parent.parent / "tools"


# ---------------------------------------------------------------------- the source audit
def _calls(path: Path) -> list[tuple[ast.Call, str]]:
    """(call, dotted name of what is called) for every call in a Python file."""
    def name(node: ast.AST) -> str:
        if isinstance(node, ast.Attribute):
            return f"{name(node.value)}.{node.attr}"
        return node.id if isinstance(node, ast.Name) else "?"

    return [(node, name(node.func)) for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]


def _keyword(call: ast.Call, key: str) -> Any:
    for kw in call.keywords:
        if kw.arg == key:
            return ast.literal_eval(kw.value) if isinstance(kw.value, ast.Constant) else "expression"
    return None


SOURCES = sorted([*PACKAGE.rglob("*.py"), *TOOLS.glob("*.py")])


def test_files_from_others_are_loaded_as_data_only() -> None:
    problems = [problem for path in SOURCES for problem in _audit(path)]
    assert not problems, problems


def _audit(path: Path) -> list[str]:
    problems = []
    for call, called in _calls(path):
        where = f"{path.relative_to(PACKAGE.parent)}:{call.lineno} {called}"
        if called.endswith("torch.load") and _keyword(call, "weights_only") is not True:
            problems.append(f"{where} without weights_only=True")
        if called.split(".")[-1] in ("from_pretrained", "from_single_file", "load_config") and called.startswith(("cls", "Stable", "Text",
                                                                                                                "Diffusion", "CLIP")):
            if _keyword(call, "local_files_only") is None:
                problems.append(f"{where} without local_files_only")
            if _keyword(call, "trust_remote_code"):
                problems.append(f"{where} with trust_remote_code")
        if called in ("pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "dill.load", "joblib.load", "shelve.open",
                      "yaml.load", "yaml.unsafe_load", "yaml.full_load", "eval", "exec", "os.system"):
            problems.append(where)
        if called.endswith("np.load") and _keyword(call, "allow_pickle"):
            problems.append(f"{where} with allow_pickle")
        if called.endswith(("subprocess.run", "subprocess.Popen", "subprocess.call")) and _keyword(call, "shell"):
            problems.append(f"{where} with shell=True")
    return problems


# ---------------------------------------------------------------------- pickles that run code
class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_cache_file_that_would_run_code_is_rebuilt_and_the_code_never_runs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("THREEDISTILL_CACHE", str(cache))
    out = tmp_path / "out"
    assert run_cli("run", *TINY_FLAGS, "--steps", "1", "--out", str(out)).returncode == 0
    marker = tmp_path / "the-command-ran"
    for path in (cache / "toyworld").glob("*.pt"):
        torch.save({"format": "threedistill-tensor-cache-1", "tensors": _RunsACommand(marker)}, path)
    proc = run_cli("run", *TINY_FLAGS, "--steps", "1", "--out", str(out))
    assert proc.returncode == 0 and "corrupt" in proc.stderr
    assert not marker.exists()


def test_model_weights_that_would_run_code_are_refused_and_the_code_never_runs(tiny_sd: dict[str, Path], tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    from diffusers import UNet2DConditionModel

    model = shutil.copytree(tiny_sd["sd1"], tmp_path / "model")
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    for weights in (model / "unet").glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "the-command-ran"
    torch.save({**unet.state_dict(), "payload": _RunsACommand(marker)}, model / "unet" / "diffusion_pytorch_model.bin")
    proc = run_cli("run", "--prior", "sd", "--prior.model", str(model), "--prompt", "a corgi", "--steps", "1",
                    "--device", "cpu", "--log.no-progress", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    (line,) = error_lines(proc)
    assert str(model) in line and "could run code, so it was not loaded" in line, line
    assert not marker.exists() and not any((tmp_path / "out").rglob("*"))


# ---------------------------------------------------------------------- no network unless asked
@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every connection or name lookup is recorded and refused."""
    attempts: list[str] = []

    def refuse(what: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{what}{args[1:2] or args[:1]}")
            raise OSError(f"network access in a test: {what}")
        return call

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the code itself must keep loads offline
    return attempts


@pytest.fixture
def hub_cache(tiny_sd: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A Hugging Face cache holding the tiny SD 1.x pipeline as the Hub id 'tiny/sd'; returns the id."""
    import huggingface_hub.constants as hf_constants

    root = tmp_path / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_sd["sd1"], root / "models--tiny--sd" / "snapshots" / revision)
    (root / "models--tiny--sd" / "refs").mkdir()
    (root / "models--tiny--sd" / "refs" / "main").write_text(revision)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(root))
    return "tiny/sd"


def test_a_hub_model_runs_with_the_network_cut_off(hub_cache: str, no_network: list[str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    proc = run_cli("run", "--prior", "sd", "--prior.model", hub_cache, "--prompt", "a corgi", "--steps", "2",
                    "--device", "cpu", "--log.no-progress", "--representation.num-points", "200", "--sampler.batch-size", "1",
                    "--log.export-formats", "splat", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert no_network == []


def test_every_model_load_path_works_offline(tiny_sd: dict[str, Path], tiny_ip2p: Path, tiny_t2v: Path,
                                             no_network: list[str]) -> None:
    from threedistill.priors.diffusers.instruct_pix2pix import InstructPix2PixConfig, load_ip2p_pipeline
    from threedistill.priors.diffusers.stable_diffusion import StableDiffusionConfig, load_sd_pipeline
    from threedistill.priors.diffusers.video import VideoDiffusionConfig, load_video_pipeline
    from threedistill.priors.toyworld_sd.prior import ToyworldSDConfig

    for kind in ("sd1", "sdxl"):
        assert load_sd_pipeline(StableDiffusionConfig(model=str(tiny_sd[kind]))) is not None
    assert load_ip2p_pipeline(InstructPix2PixConfig(model=str(tiny_ip2p))) is not None
    assert load_video_pipeline(VideoDiffusionConfig(model=str(tiny_t2v))) is not None
    assert load_sd_pipeline(ToyworldSDConfig().located()) is not None  # the shipped toyworld-sd model
    assert no_network == []


def test_only_allow_download_reaches_the_network(no_network: list[str], tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    args = ["run", "--prior", "sd", "--prior.model", "nobody/no-such-model", "--prompt", "a corgi", "--steps", "1", "--device", "cpu",
            "--log.no-progress", "--out", str(tmp_path / "out")]
    offline = run_cli(*args)
    assert offline.returncode == 2 and "--prior.allow-download" in error_lines(offline)[0]
    assert no_network == []  # refused from the local cache alone
    import huggingface_hub.utils._http as hub_http

    monkeypatch.setattr(hub_http, "time", type("NoWait", (), {"sleep": staticmethod(lambda s: None), "time": hub_http.time.time}))
    online = run_cli(*args, "--prior.allow-download")  # the Hub client retries: without waiting here
    assert online.returncode == 2 and "could not download" in error_lines(online)[0]
    assert no_network, "with --prior.allow-download the model was requested from the Hub"
    assert not any((tmp_path / "out").rglob("*"))


def test_offline_mode_refuses_every_hub_request(no_network: list[str], tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download

    from threedistill.priors.diffusers.loading import offline_mode

    with offline_mode(), pytest.raises(Exception) as err:
        hf_hub_download("nobody/no-such-model", "model_index.json", cache_dir=str(tmp_path))
    assert "offline" in str(err.value).lower() or type(err.value).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled")
    assert no_network == []


# ---------------------------------------------------------------------- user text never leaves --out
def test_an_edited_image_folder_stays_inside_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import numpy as np
    import imageio.v3 as iio

    image = tmp_path / "in.png"
    iio.imwrite(image, np.full((8, 8, 3), 200, np.uint8))
    out = tmp_path / "edits"
    proc = run_cli("edit-image", str(image), "--source", "a red cube", "--target", "../../a blue cube", "--prior", "toyworld",
                    "--steps", "1", "--prior.num-references", "8", "--prior.resolution", "16", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    (folder,) = out.glob("*/*")
    assert folder.parent.name == "a-blue-cube" and folder.resolve().is_relative_to(out.resolve())


def test_a_stage_name_that_is_a_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "staged.yaml"
    config.write_text("stages:\n  - {name: ../../../escaped, share: 0.5}\n  - {name: b, share: 0.5}\n")
    proc = run_cli("run", *TINY_FLAGS, "--config", str(config), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "stage 1 is named '../../../escaped'" in error_lines(proc)[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.parent.glob("escaped*"))


def test_a_prompt_folder_that_links_outside_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "a-red-mug").symlink_to(elsewhere)
    proc = run_cli("run", *TINY_FLAGS, "--prompt", "a red mug", "--out", str(out))
    assert proc.returncode == 2 and "is a link" in error_lines(proc)[0]
    assert not any(elsewhere.iterdir())
