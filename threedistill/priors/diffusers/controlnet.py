"""ControlNet conditioning of the Stable Diffusion prior: `--prior.controlnet PATH`.

A diffusers `ControlNetModel` (a folder with config.json and its weights, or a Hub id in the
local cache; offline unless `--prior.allow-download`) adds its residuals to the frozen UNet's,
conditioned on an image made from the current render of each view, so the prior scores the
renders *given* their own geometry (DreamMat distils materials through a geometry ControlNet).
The loop hands the prior every step's render (`Prior.observe_render`); the condition is
(`--prior.controlnet-condition`, channels in [0, 1] at the prior's pixel resolution):

* `depth`: inverse depth normalised per view (near = 1, far = 0, background 0), as 3 channels:
  what depth ControlNets read;
* `normal`: camera-space normals from the depth map (x right, y up, z toward the viewer,
  mapped to [0, 1]; background 0), as normal-map ControlNets read them;
* a list of channels concatenated in order, for a ControlNet trained on them: `rgb` (3),
  `alpha` (1), `depth` (1), `normal` (3), `light` (18: DreamMat's six renders of the mesh under the
  view's environment light, white albedo at metallic {0, 1} x roughness {0, 0.5, 1}; a PBR mesh
  (`--material pbr`) renders them, render/mesh_pbr.py), e.g. `--prior.controlnet-condition depth
  normal alpha`, or DreamMat's 22 channels `depth normal light`.

The total must equal the ControlNet's `conditioning_channels` (checked when it loads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.cameras import Cameras
from ...core.errors import UserError
from ...core.runtime import load_quietly
from ...core.types import RenderOutput
from .loading import hf_cache_dir, load_errors, looks_like_path, offline_mode, one_line, safetensors_problem

CHANNELS = {"rgb": 3, "alpha": 1, "depth": 1, "normal": 3, "light": 18}
FIX = "pass --prior.controlnet PATH to a diffusers ControlNetModel folder (config.json + weights), or drop --prior.controlnet"


def condition_channels(names: tuple[str, ...]) -> int:
    """Channels of the condition image `names` make (see the module docstring)."""
    unknown = [n for n in names if n not in CHANNELS]
    if unknown or not names:
        raise UserError(f"unknown --prior.controlnet-condition {unknown[0] if unknown else '(empty)'}; use depth, normal, or a list "
                        f"of {', '.join(CHANNELS)}")
    return 3 if names in (("depth",), ("normal",)) else sum(CHANNELS[n] for n in names)


def locate_controlnet(model: str, allow_download: bool) -> tuple[str, bool]:
    """(source, local_files_only) of a ControlNet folder or cached Hub id; one-line UserErrors otherwise."""
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"ControlNet '{model}' has no config.json; {FIX}")
        for weights in sorted(local.glob("*.safetensors")):
            problem = safetensors_problem(weights)
            if problem:
                raise UserError(f"ControlNet '{model}' is damaged or partly downloaded: '{weights.name}' {problem}; re-download it, or {FIX}")
        return str(local.resolve()), True
    if local.exists() or looks_like_path(model):
        raise UserError(f"ControlNet path '{model}' {'is not a folder' if local.exists() else 'does not exist'}; {FIX}")
    if allow_download:
        return model, False
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(model, "config.json"), str):
        raise UserError(f"ControlNet '{model}' is not in the local Hugging Face cache ({hf_cache_dir()}) and downloads are off; "
                        f"download it with `huggingface-cli download {model}`, add --prior.allow-download, or {FIX}")
    return model, True


def load_controlnet(model: str, allow_download: bool, names: tuple[str, ...]) -> Any:
    """The ControlNetModel, its conditioning channels checked against `names`; every failure is one line."""
    source, local_only = locate_controlnet(model, allow_download)

    def attempt() -> Any:
        from diffusers import ControlNetModel

        try:
            with offline_mode(local_only):
                return ControlNetModel.from_pretrained(source, local_files_only=local_only)
        except load_errors() as err:
            raise UserError(f"could not load ControlNet '{model}' ({one_line(err)}); {FIX}") from err

    net = load_quietly(attempt)
    wanted, has = condition_channels(names), int(net.config.conditioning_channels)
    if wanted != has:
        raise UserError(f"ControlNet '{model}' reads {has} condition channels, and --prior.controlnet-condition {' '.join(names)} "
                        f"makes {wanted}; choose channels that add up to {has}")
    return net


def _camera_points(depth: Tensor, cams: Cameras) -> Tensor:
    """Camera-space points [B,3,H,W] (OpenCV axes) of each pixel at its depth."""
    b, _, h, w = depth.shape
    focal = cams.focal.to(depth).view(b, 1, 1) * (h / cams.height)
    v, u = torch.meshgrid(torch.arange(h, device=depth.device, dtype=depth.dtype) + 0.5,
                          torch.arange(w, device=depth.device, dtype=depth.dtype) + 0.5, indexing="ij")
    z = depth[:, 0]
    return torch.stack([(u - 0.5 * w) / focal * z, (v - 0.5 * h) / focal * z, z], dim=1)


def render_condition(out: RenderOutput, cams: Cameras, names: tuple[str, ...], size: int) -> Tensor:
    """The condition image [B,C,size,size] in [0,1] of the renders `out` (see the module docstring)."""
    alpha = out.alpha.detach()
    depth = out.depth.detach() / alpha.clamp_min(1e-6)  # un-composited depth along the camera axis
    solid = alpha > 0.5
    parts: dict[str, Tensor] = {"rgb": out.rgb.detach()[:, :3], "alpha": alpha}
    if "depth" in names:
        inverse = torch.where(solid, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))
        big = torch.finfo(depth.dtype).max
        near = torch.where(solid, inverse, torch.full_like(inverse, -big)).flatten(1).amax(1).view(-1, 1, 1, 1)
        far = torch.where(solid, inverse, torch.full_like(inverse, big)).flatten(1).amin(1).view(-1, 1, 1, 1)
        parts["depth"] = torch.where(solid, (inverse - far) / (near - far).clamp_min(1e-6) * 0.9 + 0.1, torch.zeros_like(inverse))
    if "normal" in names:
        points = _camera_points(torch.where(solid, depth, torch.ones_like(depth)), cams)
        du = F.pad(points[..., :, 1:] - points[..., :, :-1], (0, 1, 0, 0), mode="replicate")
        dv = F.pad(points[..., 1:, :] - points[..., :-1, :], (0, 0, 0, 1), mode="replicate")
        normal = F.normalize(torch.cross(dv, du, dim=1), dim=1)  # toward the camera (OpenCV: -z)
        normal = normal * torch.tensor([1.0, -1.0, -1.0], device=normal.device).view(1, 3, 1, 1)  # x right, y up, z to viewer
        parts["normal"] = torch.where(solid, normal * 0.5 + 0.5, torch.zeros_like(normal))
    if "light" in names:
        light = out.extras.get("light_condition")
        if light is None:  # the plan refuses `light` without a PBR mesh; a render without gradients has none
            light = torch.zeros(alpha.shape[0], CHANNELS["light"], *alpha.shape[-2:], device=alpha.device, dtype=alpha.dtype)
        parts["light"] = light.detach().to(alpha)
    if names == ("depth",):
        image = parts["depth"].expand(-1, 3, -1, -1)
    else:
        image = torch.cat([parts[n] for n in names], dim=1)
    if image.shape[-2:] != (size, size):
        image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=image.shape[-1] > size)
    return image.clamp(0.0, 1.0)
