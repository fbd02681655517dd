"""One loading path for every diffusers model (Stable Diffusion, text-to-video, InstructPix2Pix).

A model is named by `model` (a local diffusers folder, a single-file checkpoint where the kind
allows it, or a Hugging Face Hub id) and `allow_download`. Two steps:

1. `locate_model` finds it offline without loading anything: a folder with model_index.json,
   a checkpoint file, or a Hub id whose model_index.json is in the local Hugging Face cache
   (with `allow_download`, the Hub itself). The run plan calls it for every model every stage
   will load, so a missing model is one line before any work starts. A partial download is
   refused there too (`check_complete`): a component folder model_index.json lists but the
   folder lacks, a cache link whose file is missing, a `.incomplete` download in the Hub
   cache, a .safetensors file shorter than its header says.
2. `load_pipeline` loads the located model with the kind's pipeline class, the libraries'
   chatter silenced; every failure is one UserError line naming the model and the fixes.
   Without `allow_download` the load runs with the Hugging Face Hub in offline mode
   (`offline_mode`), so no code path of diffusers or transformers can reach the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from ...core.errors import UserError
from ...core.runtime import load_quietly

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
MIN_TOKENIZER_SIZE = 100


@dataclass(frozen=True)
class ModelKind:
    """How one kind of diffusers model is named in messages and flags."""

    name: str
    """'Stable Diffusion', 'text-to-video', 'InstructPix2Pix'."""
    flag: str
    """The config section whose `.model` names it ('--prior', '--guidance')."""
    fallback: str = ""
    """An alternative to suggest ('use --prior toyworld'), or ''."""
    single_file: bool = False
    """Single-file .safetensors/.ckpt checkpoints are accepted."""
    pipeline_classes: tuple[str, ...] = ()
    """Accepted model_index.json `_class_name`s (empty: any)."""
    class_hint: str = ""
    """What to say when the class does not match."""
    optional_components: tuple[str, ...] = ()
    """model_index.json components that may be absent from a download (IF's safety checker, watermarker)."""
    access_note: str = ""
    """Appended to the download command when the model is not on disk (a licence to accept first)."""

    def fix(self) -> str:
        folder = "a local diffusers folder or .safetensors/.ckpt file" if self.single_file else f"a local diffusers {self.name} folder"
        return f"pass {self.flag}.model PATH to {folder}" + (f", or {self.fallback}" if self.fallback else "")


@dataclass(frozen=True)
class ModelLocation:
    """A located model: what to pass to `from_pretrained` / `from_single_file`."""

    source: str
    """An absolute local path or a Hub id."""
    index: Optional[dict[str, Any]]
    """model_index.json's content (None for a single file)."""
    is_file: bool
    local_files_only: bool

    @property
    def class_name(self) -> str:
        return str((self.index or {}).get("_class_name", ""))


def one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def looks_like_path(model: str) -> bool:
    return model.endswith(SINGLE_FILE_SUFFIXES) or model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


def model_key(model: str) -> str:
    """Hub ids stay as given; local paths become absolute."""
    local = Path(model).expanduser()
    return str(local.resolve()) if local.exists() else model


def _read_index(path: Path, model: str, kind: ModelKind) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{kind.name} model '{model}' has an unreadable model_index.json ({one_line(err)}); {kind.fix()}") from None
    if not isinstance(index, dict):
        raise UserError(f"{kind.name} model '{model}' has a malformed model_index.json; {kind.fix()}")
    return index


def _check_class(model: str, index: dict[str, Any], kind: ModelKind) -> None:
    name = str(index.get("_class_name", ""))
    if kind.pipeline_classes and name not in kind.pipeline_classes:
        raise UserError(f"'{model}' is a {name or 'unknown'} pipeline, not a {' or '.join(kind.pipeline_classes)}"
                        f"{kind.class_hint}; {kind.fix()}")


def locate_model(model: str, allow_download: bool, kind: ModelKind) -> ModelLocation:
    """Find `model` offline (see the module docstring); a UserError names the model and the fix."""
    local = Path(model).expanduser()
    if local.is_file():
        if not kind.single_file:
            raise UserError(f"{kind.name} model '{model}' is a file; single-file checkpoints are not supported; {kind.fix()}")
        if not local.name.endswith(SINGLE_FILE_SUFFIXES):
            raise UserError(f"{kind.name} model file '{model}' is not a .safetensors/.ckpt checkpoint; {kind.fix()}")
        if local.suffix == ".safetensors":
            problem = safetensors_problem(local)
            _refuse_incomplete(model, kind, f"the file {problem}" if problem else None)
        return ModelLocation(str(local.resolve()), None, True, not allow_download)
    if local.is_dir():
        index_path = local / "model_index.json"
        if not index_path.is_file():
            raise UserError(f"'{model}' is not a diffusers {kind.name} folder (no model_index.json); {kind.fix()}")
        index = _read_index(index_path, model, kind)
        _check_class(model, index, kind)
        _refuse_incomplete(model, kind, check_complete(local, index, kind.optional_components))
        return ModelLocation(str(local.resolve()), index, False, True)
    if looks_like_path(model):
        raise UserError(f"{kind.name} model path '{model}' does not exist; {kind.fix()}")
    if allow_download:
        return ModelLocation(model, None, False, False)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "model_index.json")
    if not isinstance(cached, str):
        alternative = f", or {kind.fallback}" if kind.fallback else ""
        raise UserError(f"{kind.name} model '{model}' is not in the local Hugging Face cache ({hf_cache_dir()}) and downloads "
                        f"are off; download it with `huggingface-cli download {model}`{kind.access_note}, pass {kind.flag}.model PATH to a local "
                        f"copy, add {kind.flag}.allow-download{alternative}")
    index = _read_index(Path(cached), model, kind)
    _check_class(model, index, kind)
    snapshot = Path(cached).parent
    _refuse_incomplete(model, kind, check_complete(snapshot, index, kind.optional_components)
                       or _incomplete_blobs(snapshot.parent.parent / "blobs"))
    return ModelLocation(model, index, False, True)


def check_complete(folder: Path, index: dict[str, Any], optional: tuple[str, ...] = ()) -> Optional[str]:
    """What a partial download left out of a diffusers folder, or None when it looks whole: a component
    model_index.json lists without its folder (`optional` ones aside), a link to a missing file, a truncated .safetensors."""
    for name, value in index.items():
        if name.startswith("_") or name in optional or not isinstance(value, list) or len(value) != 2 or None in value:
            continue
        if not (folder / name).is_dir():
            return f"its '{name}' folder is missing"
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() and not path.exists():
            return f"'{path.relative_to(folder)}' links to a missing file"
        if path.suffix == ".safetensors" and path.is_file():
            problem = safetensors_problem(path)
            if problem:
                return f"'{path.relative_to(folder)}' {problem}"
    return None


def safetensors_problem(path: Path) -> Optional[str]:
    """Whether a .safetensors file is shorter than its header says (or has no readable header)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return "is truncated (no header)"
            (length,) = struct.unpack("<Q", raw)
            if length > min(size - 8, 100_000_000):
                return "is truncated or not a safetensors file (header longer than the file)"
            header = json.loads(f.read(length))
    except (OSError, ValueError, UnicodeDecodeError):
        return "has an unreadable header"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    expected = 8 + length + max(ends, default=0)
    return f"is truncated ({size} of {expected} bytes)" if size < expected else None


def _incomplete_blobs(blobs: Path) -> Optional[str]:
    partial = sorted(blobs.glob("*.incomplete")) if blobs.is_dir() else []
    return f"the Hub cache holds an unfinished download ({partial[0]})" if partial else None


def _refuse_incomplete(model: str, kind: ModelKind, problem: Optional[str]) -> None:
    if problem:
        local = looks_like_path(model) or Path(model).expanduser().exists()
        again = "re-download it" if local else f"download it again with `huggingface-cli download {model}`"
        raise UserError(f"{kind.name} model '{model}' is damaged or partly downloaded: {problem}; {again}, or {kind.fix()}")


def load_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a diffusers/transformers load raises for a bad or missing model."""
    errors: list[type[BaseException]] = [OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError, ImportError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from huggingface_hub.errors import HfHubHTTPError

        errors.append(HfHubHTTPError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def load_failure(kind: ModelKind, model: str, location: ModelLocation, err: BaseException) -> str:
    """One line on why a located model did not load, with the fixes."""
    why = one_line(err)
    alternative = f", or {kind.fallback}" if kind.fallback else ""
    if _refused_pickle(err):
        return (f"{kind.name} model '{model}' holds a pickled weight file with Python objects other than tensors, which could "
                f"run code, so it was not loaded; use its .safetensors weights, pass {kind.flag}.model PATH to another copy"
                f"{alternative}")
    if location.is_file:
        return (f"could not load {kind.name} checkpoint '{model}' ({why}); if the file is corrupt re-download it; single-file "
                f"loading also needs the base model's diffusers config in the Hugging Face cache ({hf_cache_dir()}), so add "
                f"{kind.flag}.allow-download once, or pass {kind.flag}.model PATH to a diffusers folder{alternative}")
    if Path(location.source).is_dir():
        return (f"could not load the {kind.name} folder '{model}' ({why}); make sure it is a complete diffusers export, "
                f"pass {kind.flag}.model PATH to another copy{alternative}")
    if location.local_files_only:
        return (f"{kind.name} model '{model}' is incomplete in the local Hugging Face cache ({hf_cache_dir()}) ({why}); "
                f"download it again with `huggingface-cli download {model}`, pass {kind.flag}.model PATH to a local copy, "
                f"add {kind.flag}.allow-download{alternative}")
    return (f"could not download {kind.name} model '{model}' into {hf_cache_dir()} ({why}); check the model id and the "
            f"network, pass {kind.flag}.model PATH to a local copy{alternative}")


def _refused_pickle(err: BaseException) -> bool:
    """torch.load(weights_only=True) refused an object somewhere in the chain of `err`."""
    seen: Optional[BaseException] = err
    while seen is not None:
        if "weights_only" in str(seen) or "Unsupported global" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def load_pipeline(model: str, allow_download: bool, kind: ModelKind, load: Callable[[ModelLocation], Any]) -> Any:
    """Locate `model`, then `load(location)` with the libraries silenced; every failure is one UserError line."""
    location = locate_model(model, allow_download, kind)

    def attempt() -> Any:
        try:
            with offline_mode(location.local_files_only):
                return load(location)
        except UserError:
            raise
        except load_errors() as err:
            raise UserError(load_failure(kind, model, location, err)) from err

    return load_quietly(attempt)


@contextlib.contextmanager
def offline_mode(offline: bool = True) -> Iterator[None]:
    """Within the block (when `offline`), the Hugging Face Hub client refuses every request, whatever
    a library's arguments say (huggingface_hub reads `constants.HF_HUB_OFFLINE` on each request)."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved[0]
        if saved[1] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[1]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: float16 on CUDA, float32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float16": torch.float16, "float32": torch.float32}[name]


def check_tokenizer(tokenizer: Any, model: str, flag: str) -> None:
    """A tokenizer with fewer than MIN_TOKENIZER_SIZE tokens is the trace of an incomplete download."""
    n = len(tokenizer)
    if n < MIN_TOKENIZER_SIZE:
        raise UserError(
            f"tokenizer of {model} has only {n} tokens: the download is incomplete; delete it and download it again "
            f"(`huggingface-cli download {model}`), or pass {flag}.model PATH to a complete copy"
        )
