"""MVDream's multi-view UNet as a diffusers model (`ModelMixin` + `ConfigMixin`), written for threedistill.

It is the Stable Diffusion 2.1 UNet in the original (LDM) module layout with two changes
(Shi et al. 2023, "MVDream"):

* the self-attention of every transformer block runs jointly over the `num_frames` views of
  one object: tokens [(B F), L, C] are regrouped to [B, (F L), C] for `attn1` and back;
* a camera embedding (each view's flattened, normalised 4x4 camera-to-world matrix, `camera_dim`
  = 16, through a two-layer MLP) is added to the timestep embedding.

Parameter names and the config follow the public diffusers-format checkpoint
(`ashawkey/mvdream-sd2.1-diffusers`, folder `unet/`: `config.json` with `_class_name`
MultiViewUNetModel, weights in `diffusion_pytorch_model.safetensors`), so its weights load with
`from_pretrained` and no key missing or left over:

    time_embed.{0,2}  camera_embed.{0,2}  input_blocks.N.M...  middle_block.{0,1,2}...
    output_blocks.N.M...  out.{0,2}
    ResBlock:      in_layers.{0,2} emb_layers.1 out_layers.{0,3} [skip_connection]
    transformer:   norm proj_in transformer_blocks.K.{attn1,attn2}.{to_q,to_k,to_v,to_out.0}
                   .ff.net.{0.proj,2} .norm{1,2,3} proj_out
    down / up:     op (strided conv) / conv

`forward(sample, timestep, encoder_hidden_states, camera=None, num_frames=1)` returns a
`UNet2DConditionOutput` like diffusers' UNets. Attention is torch's scaled_dot_product_attention.
The image-prompt variant (ImageDream, `ip_dim > 0`) is not supported.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """LDM's sinusoidal embedding [B, dim]: cos then sin of t * exp(-log(max_period) k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (LDM's `normalization`)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with the time embedding added in between, and a skip connection."""

    def __init__(self, channels: int, emb_channels: int, out_channels: Optional[int] = None, dropout: float = 0.0) -> None:
        super().__init__()
        out = out_channels or channels
        self.in_layers = nn.Sequential(GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out))
        self.out_layers = nn.Sequential(GroupNorm32(32, out), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection: nn.Module = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Attention(nn.Module):
    """Multi-head attention with bias-free q/k/v projections (self-attention when `context` is None)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: Optional[int] = None) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        context = x if context is None else context
        b = x.shape[0]
        q, k, v = (p(y).view(b, y.shape[1], self.heads, -1).transpose(1, 2) for p, y in
                   ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, x.shape[1], -1))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MultiViewTransformerBlock(nn.Module):
    """Self-attention over all views of an object, cross-attention to the text, feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Optional[Tensor], num_frames: int) -> Tensor:
        bf, length, channels = x.shape
        joint = x.reshape(bf // num_frames, num_frames * length, channels)  # [(B F), L, C] -> [B, (F L), C]
        x = (self.attn1(self.norm1(joint)) + joint).reshape(bf, length, channels)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm, linear projection to tokens, `depth` multi-view transformer blocks, projection back, residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, depth: int = 1) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([MultiViewTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)])
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: Tensor, context: Optional[Tensor], num_frames: int) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            tokens = block(tokens, context, num_frames)
        return self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w) + x


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Stage(nn.Sequential):
    """One `input_blocks` / `middle_block` / `output_blocks` entry: layers fed what each needs."""

    def forward(self, x: Tensor, emb: Tensor, context: Optional[Tensor], num_frames: int) -> Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, num_frames)
            else:
                x = layer(x)
        return x


def _mlp(dim_in: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim), nn.SiLU(), nn.Linear(dim, dim))


class MultiViewUNetModel(ModelMixin, ConfigMixin):
    """The multi-view UNet (see the module docstring); config names are the public checkpoint's."""

    config_name = "config.json"  # type: ignore[assignment]

    @register_to_config
    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 4,
        model_channels: int = 320,
        out_channels: int = 4,
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (4, 2, 1),
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        num_heads: int = -1,
        num_head_channels: int = 64,
        context_dim: int = 1024,
        camera_dim: Optional[int] = 16,
        transformer_depth: int = 1,
        dropout: float = 0.0,
        ip_dim: int = 0,
    ) -> None:
        super().__init__()
        if ip_dim:
            raise ValueError("the image-prompt variant (ImageDream, ip_dim > 0) is not supported")
        if (num_heads == -1) == (num_head_channels == -1):
            raise ValueError("set exactly one of num_heads and num_head_channels")
        emb_dim = model_channels * 4
        self.model_channels = model_channels
        self.time_embed = _mlp(model_channels, emb_dim)
        self.camera_embed = _mlp(camera_dim, emb_dim) if camera_dim else None

        def transformer(ch: int) -> SpatialTransformer:
            heads = ch // num_head_channels if num_head_channels != -1 else num_heads
            return SpatialTransformer(ch, heads, ch // heads, context_dim, transformer_depth)

        self.input_blocks = nn.ModuleList([Stage(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skips, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * model_channels, dropout)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(Stage(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Stage(Downsample(ch)))
                skips.append(ch)
                ds *= 2
        self.middle_block = Stage(ResBlock(ch, emb_dim, dropout=dropout), transformer(ch), ResBlock(ch, emb_dim, dropout=dropout))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb_dim, model_channels * mult, dropout)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Stage(*layers))
        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

    @property
    def sample_size(self) -> int:
        """The latent side the model was trained at (`image_size`)."""
        return int(self.config["image_size"])

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, camera: Optional[Tensor] = None,
                num_frames: int = 1, return_dict: bool = True) -> Any:
        """Noise prediction for latents [(B F), C, h, w] at timesteps [(B F)], text [(B F), L, D], cameras [(B F), 16]."""
        if sample.shape[0] % num_frames:
            raise ValueError(f"a batch of {sample.shape[0]} latents is not made of groups of {num_frames} views")
        t = timestep.expand(sample.shape[0]) if timestep.ndim == 0 else timestep
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(sample.dtype))
        if camera is not None and self.camera_embed is not None:
            emb = emb + self.camera_embed(camera.to(emb.dtype))
        context = encoder_hidden_states.to(sample.dtype)
        h, hs = sample, []
        for block in self.input_blocks:
            h = block(h, emb, context, num_frames)
            hs.append(h)
        h = self.middle_block(h, emb, context, num_frames)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context, num_frames)
        out = self.out(h)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)
