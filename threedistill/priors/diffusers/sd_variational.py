"""VSD's variational score model for Stable Diffusion (ProlificDreamer / threestudio style).

`StableDiffusionPrior.variational_model(config)` builds an `SDVariationalModel`: a deep copy of
the prior's UNet (the frozen prior itself is never touched) with

* LoRA adapters (peft, rank `config.lora_rank`, alpha = rank, B initialised to zero) on every
  attention's to_q / to_k / to_v / to_out.0. The copy's base weights stay frozen; the LoRA
  weights are kept in float32 even when the UNet is float16 (peft casts their input to their
  dtype and the sum back to the base layer's dtype).
* Camera conditioning: the flattened camera-to-world matrix c2w (16 values, as given) goes
  through `Linear(16, D) -> SiLU -> Linear(D, D)` (float32; D = the UNet's time-embedding width,
  `unet.time_embedding.linear_2.out_features`) and is *added to the time embedding* by a
  forward hook on `unet.time_embedding`. The hook adds something only while the model has set a
  camera batch; the camera-unconditional branch c = none (`cameras=None`, and the samples dropped
  with probability `config.camera_dropout` during training) adds zeros. The MLP's last layer is
  zero-initialised, so together with LoRA's zero B a fresh model predicts exactly what the prior
  predicts, with or without cameras.

`update` trains LoRA + camera MLP with AdamW (lr `config.lr`) on the standard diffusion loss at
t ~ U{0..T-1}: MSE between the UNet output and its native target (eps, or
v = alpha_t eps - sigma_t x0 for v-prediction models). `predict_eps` always returns epsilon.
The UNet call itself (embedding unpacking, SDXL added conditions, channels_last, v -> eps) is the
prior's own (`StableDiffusionPrior.unet_output` / `output_to_eps`).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.cameras import Cameras
from ...core.errors import UserError
from ..base import VariationalConfig, add_noise, noise_coefficients



class UNetPrior(Protocol):
    """What the variational model uses of its prior (`StableDiffusionPrior`): its UNet and the UNet call."""

    unet: Any
    device: torch.device
    alphas_cumprod: Tensor
    num_train_timesteps: int
    v_prediction: bool

    def unet_output(self, unet: Any, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor: ...

    def output_to_eps(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor: ...

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_KEY = "lora_"  # peft's LoRA parameter names contain lora_A / lora_B


class CameraEmbedding(nn.Module):
    """Flattened c2w [B,4,4] -> [B, D]; the last layer starts at zero (adds nothing at first)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        last = nn.Linear(dim, dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(nn.Linear(16, dim), nn.SiLU(), last)

    def forward(self, c2w: Tensor) -> Tensor:
        return self.net(c2w.reshape(c2w.shape[0], 16))


class SDVariationalModel:
    """LoRA + camera-conditioned copy of a Stable Diffusion UNet (`VariationalModel`)."""

    def __init__(self, prior: UNetPrior, config: VariationalConfig) -> None:
        from peft import LoraConfig

        if config.lora_rank < 1 or config.train_steps < 1 or not 0.0 <= config.camera_dropout <= 1.0:
            raise UserError(f"variational model: need lora_rank >= 1 (got {config.lora_rank}), train_steps >= 1 "
                            f"(got {config.train_steps}) and camera_dropout in [0, 1] (got {config.camera_dropout})")
        self.prior = prior
        self.config = config
        self.device = prior.device
        unet = copy.deepcopy(prior.unet)
        unet.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_rank, init_lora_weights=True,
                                    target_modules=LORA_TARGETS))
        unet.requires_grad_(False)
        self.lora_params: list[nn.Parameter] = []
        for name, p in unet.named_parameters():
            if LORA_KEY in name:
                p.data = p.data.to(self.device, torch.float32)  # trainable weights stay float32 under fp16
                p.requires_grad_(True)
                self.lora_params.append(p)
        if not self.lora_params:
            raise RuntimeError("peft added no LoRA layers to the UNet (no to_q/to_k/to_v/to_out.0 modules?)")
        self.unet = unet.eval()
        dim = int(unet.time_embedding.linear_2.out_features)
        self.camera_embedding = CameraEmbedding(dim).to(self.device, torch.float32)
        self._camera_emb: Optional[Tensor] = None
        self._hook = unet.time_embedding.register_forward_hook(self._add_camera_embedding)
        self.optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=config.lr)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA weights then camera-MLP weights (a fixed order: the optimiser state depends on it)."""
        return self.lora_params + list(self.camera_embedding.parameters())

    # ------------------------------------------------------------------ camera conditioning
    def _add_camera_embedding(self, module: nn.Module, inputs: Any, output: Tensor) -> Optional[Tensor]:
        if self._camera_emb is None:
            return None
        if self._camera_emb.shape[0] != output.shape[0]:
            raise ValueError(f"camera batch {self._camera_emb.shape[0]} does not match the UNet batch {output.shape[0]}")
        return output + self._camera_emb.to(output.dtype)

    @contextmanager
    def _cameras(self, cameras: Optional[Cameras], keep: Optional[Tensor] = None) -> Iterator[None]:
        """Condition UNet calls inside on `cameras` (None: c = none); `keep` [B] bool drops rows to none."""
        if cameras is None:
            yield
            return
        emb = self.camera_embedding(cameras.c2w.to(self.device, torch.float32))
        if keep is not None:
            emb = emb * keep.to(emb.device, emb.dtype).unsqueeze(1)
        self._camera_emb = emb
        try:
            yield
        finally:
            self._camera_emb = None

    # ------------------------------------------------------------------ VariationalModel
    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, cameras: Optional[Cameras]) -> Tensor:
        """Epsilon of the rendered distribution at x_t, timesteps t [B] (no grad)."""
        with self._cameras(cameras):
            out = self.prior.unet_output(self.unet, x_t, t, emb)
        return self.prior.output_to_eps(out, x_t, t).to(x_t.dtype)

    def update(self, x0: Tensor, emb: Tensor, cameras: Cameras, generator: torch.Generator) -> dict[str, float]:
        """`config.train_steps` AdamW steps of the diffusion loss on detached latents x0 [B,4,h,w]."""
        prior, cfg = self.prior, self.config
        x0 = x0.detach().to(self.device, torch.float32)
        b = x0.shape[0]
        gdev = generator.device
        loss_value = 0.0
        with torch.enable_grad():
            for _ in range(cfg.train_steps):
                t = torch.randint(0, prior.num_train_timesteps, (b,), generator=generator, device=gdev).to(self.device)
                noise = torch.randn(x0.shape, generator=generator, device=gdev).to(self.device)
                keep = torch.rand(b, generator=generator, device=gdev) >= cfg.camera_dropout
                x_t = add_noise(prior.alphas_cumprod, x0, noise, t)
                if prior.v_prediction:
                    a, s = noise_coefficients(prior.alphas_cumprod, t, x0.ndim)
                    target = a * noise - s * x0
                else:
                    target = noise
                with self._cameras(cameras, keep):
                    out = prior.unet_output(self.unet, x_t, t, emb)
                loss = F.mse_loss(out, target)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                loss_value = float(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        return {"vsd_lora_loss": loss_value}

    def state_dict(self) -> dict[str, Any]:
        """LoRA weights, camera-MLP weights and the optimiser state."""
        lora = {k: v.detach().clone() for k, v in self.unet.state_dict().items() if LORA_KEY in k}
        camera = {k: v.detach().clone() for k, v in self.camera_embedding.state_dict().items()}
        return {"lora": lora, "camera_embedding": camera, "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` (the model must have been built with the same LoRA rank)."""
        own = {k: v.shape for k, v in self.unet.state_dict().items() if LORA_KEY in k}
        given = {k: v.shape for k, v in state["lora"].items()}
        if own != given:
            missing, extra = sorted(own.keys() - given.keys())[:3], sorted(given.keys() - own.keys())[:3]
            resized = sorted(k for k in own.keys() & given.keys() if own[k] != given[k])[:3]
            raise ValueError(f"LoRA state does not match this model (missing {missing}, unexpected {extra}, "
                             f"other shape {resized}: a different lora_rank?)")
        self.unet.load_state_dict(state["lora"], strict=False)
        self.camera_embedding.load_state_dict(state["camera_embedding"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
