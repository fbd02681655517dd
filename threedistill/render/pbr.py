"""A differentiable Cook-Torrance / GGX shader and the environment lights it shades under.

Pure torch, so the same code runs on CPU and CUDA tensors. Material: albedo (base colour),
roughness r and metallic m in [0, 1], the glTF metallic-roughness model:

    alpha = r^2,  F0 = mix(0.04, albedo, m),  c_diff = albedo (1 - m)
    D   = alpha^2 / (pi ((n.h)^2 (alpha^2 - 1) + 1)^2)                     (GGX / Trowbridge-Reitz)
    G   = G1(n.l) G1(n.v),  G1(x) = x / (x (1 - k) + k),  k = alpha / 2     (Smith-Schlick)
    F   = F0 + (1 - F0) (1 - v.h)^5                                        (Schlick)
    L_o = sum_lights E_i max(n.l_i, 0) [ c_diff + s pi D G F / (4 (n.l)(n.v)) ]
          + A [ c_diff + s EnvBRDF(F0, r, n.v) ]

E_i is a directional light's colour (intensity with the 1/pi of the Lambert lobe folded in, so a
white Lambertian surface facing a light of colour E shows E), A the ambient (a uniform
environment); EnvBRDF is Karis' analytic fit of the split-sum specular integral (mobile
shading, 2014). The diffuse lobe is not reduced by (1 - F) (as in nvdiffrec), so with the
specular weight s = 0 and m = 0 the shader is exactly Lambert: L_o = albedo (sum_i E_i
max(n.l_i, 0) + A). Dielectric F0 is `DIELECTRIC_F0` (0.04).

The light model (`Environment`): a few directional lights plus an ambient term. Training views
each draw one of `TRAINING_LIGHTS`; scoring and exports use `HELDOUT_LIGHT`, which no training
view sees. Outputs are linear radiance clamped to [0, 1] (no tone mapping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

DIELECTRIC_F0 = 0.04
"""Fresnel reflectance at normal incidence of a non-metal (glTF's fixed value)."""
_EPS = 1e-6


@dataclass(frozen=True)
class Environment:
    """Directional lights (world directions toward the light, z up) with colours, plus ambient."""

    directions: tuple[tuple[float, float, float], ...]
    colours: tuple[tuple[float, float, float], ...]
    ambient: tuple[float, float, float]

    def tensors(self, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
        """(unit directions [K,3], colours [K,3], ambient [3])."""
        d = F.normalize(torch.tensor(self.directions, dtype=dtype, device=device), dim=-1)
        return d, torch.tensor(self.colours, dtype=dtype, device=device), torch.tensor(self.ambient, dtype=dtype, device=device)


def _key_fill(key: tuple[float, float, float], fill: tuple[float, float, float], warm: float) -> Environment:
    return Environment((key, fill), ((0.75, 0.75 * warm, 0.75 * warm * warm), (0.25, 0.25, 0.3)), (0.2, 0.2, 0.2))


TRAINING_LIGHTS: tuple[Environment, ...] = (
    _key_fill((0.6, 0.3, 0.75), (-0.5, -0.6, 0.2), 1.0),
    _key_fill((-0.5, 0.6, 0.6), (0.6, -0.3, 0.1), 0.95),
    _key_fill((0.2, -0.8, 0.55), (-0.4, 0.7, 0.3), 1.0),
    _key_fill((-0.7, -0.4, 0.6), (0.5, 0.5, -0.2), 0.9),
)
"""The environments a training view is lit by (one drawn per view)."""

HELDOUT_LIGHT = Environment(((0.1, 0.8, 0.6), (-0.8, -0.1, 0.0)), ((0.7, 0.7, 0.65), (0.2, 0.22, 0.25)), (0.22, 0.22, 0.22))
"""The environment of scoring, previews and exports: seen by no training view."""


def environment_tensors(lights: list[Environment], device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """Stacked (directions [B,K,3], colours [B,K,3], ambient [B,3]) of one environment per view
    (every environment has the same number of lights)."""
    parts = [e.tensors(device, dtype) for e in lights]
    return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts]), torch.stack([p[2] for p in parts])


def ggx_distribution(n_dot_h: Tensor, alpha: Tensor) -> Tensor:
    """GGX normal distribution D for cos(n, h) and alpha = roughness^2."""
    a2 = alpha * alpha
    denom = n_dot_h * n_dot_h * (a2 - 1.0) + 1.0
    return a2 / (math.pi * denom * denom).clamp_min(_EPS)


def smith_g1(n_dot_x: Tensor, k: Tensor) -> Tensor:
    """Schlick-Smith masking for one direction."""
    return n_dot_x / (n_dot_x * (1.0 - k) + k).clamp_min(_EPS)


def fresnel_schlick(f0: Tensor, v_dot_h: Tensor) -> Tensor:
    return f0 + (1.0 - f0) * (1.0 - v_dot_h).clamp(0.0, 1.0) ** 5


def env_brdf_approx(f0: Tensor, roughness: Tensor, n_dot_v: Tensor) -> Tensor:
    """Karis' analytic fit of the pre-integrated specular BRDF under a uniform environment."""
    c0 = torch.tensor([-1.0, -0.0275, -0.572, 0.022], dtype=f0.dtype, device=f0.device)
    c1 = torch.tensor([1.0, 0.0425, 1.04, -0.04], dtype=f0.dtype, device=f0.device)
    r = roughness[..., None] * c0 + c1
    a004 = torch.minimum(r[..., 0] * r[..., 0], torch.exp2(-9.28 * n_dot_v)) * r[..., 0] + r[..., 1]
    scale, bias = a004 * -1.04 + r[..., 2], a004 * 1.04 + r[..., 3]
    return f0 * scale[..., None] + bias[..., None]


def shade(normal: Tensor, view: Tensor, albedo: Tensor, roughness: Tensor, metallic: Tensor,
          light_dirs: Tensor, light_colours: Tensor, ambient: Tensor, specular_weight: float = 1.0) -> Tensor:
    """Outgoing radiance [N,3] (unclamped) of N surface points.

    normal, view [N,3] unit vectors (view: surface toward the camera; normals should face it),
    albedo [N,3], roughness and metallic [N] in [0,1]; light_dirs / light_colours [N,K,3] (or
    [K,3]), ambient [N,3] (or [3]); `specular_weight` s scales both specular terms (0: Lambert).
    Differentiable w.r.t. everything.
    """
    m = metallic[..., None]
    c_diff = albedo * (1.0 - m)
    f0 = DIELECTRIC_F0 * (1.0 - m) + albedo * m
    r = roughness.clamp(0.03, 1.0)  # a perfect mirror lobe is a delta: keep D finite
    alpha = r * r
    k = (alpha / 2.0)[..., None]
    n_dot_v = (normal * view).sum(-1).clamp(_EPS, 1.0)
    l = light_dirs.expand(normal.shape[0], -1, -1) if light_dirs.dim() == 2 else light_dirs  # [N,K,3]
    h = F.normalize(l + view[:, None], dim=-1)
    n_dot_l = (normal[:, None] * l).sum(-1)  # [N,K]
    lit = n_dot_l > 0
    n_dot_l = n_dot_l.clamp(_EPS, 1.0)
    n_dot_h = (normal[:, None] * h).sum(-1).clamp(0.0, 1.0)
    v_dot_h = (view[:, None] * h).sum(-1).clamp(0.0, 1.0)
    fresnel = fresnel_schlick(f0[:, None], v_dot_h[..., None])  # [N,K,3]
    d = ggx_distribution(n_dot_h, alpha[:, None])
    g = smith_g1(n_dot_l, k) * smith_g1(n_dot_v[:, None], k)
    specular = math.pi * (d * g / (4.0 * n_dot_l * n_dot_v[:, None]))[..., None] * fresnel
    irradiance = light_colours * (n_dot_l * lit)[..., None]
    direct = ((c_diff[:, None] + specular_weight * specular) * irradiance).sum(1)
    ambient_term = ambient * (c_diff + specular_weight * env_brdf_approx(f0, r, n_dot_v).clamp_min(0.0))
    return direct + ambient_term

