"""Training toyworld-sd: a small Stable-Diffusion-architecture pipeline on toyworld renders.

The data are renders (data.py) of every catalogue object in every colour word, from the training
camera distribution (`OrbitSamplerConfig`'s defaults) at 64 px, captioned with threedistill's
own view phrases ("a red mug, side view", "side view of a red mug"), the plain prompt
sometimes, and "" for classifier-free guidance (caption dropout). The real diffusers classes:
`AutoencoderKL` (64 px -> 16x16x4 latents), `UNet2DConditionModel` with cross-attention, a
`CLIPTextModel` over the byte-level tokenizer (trained with the UNet: there is no pre-trained
CLIP to borrow), SD's scaled-linear schedule and epsilon prediction.

Two phases, VAE then UNet (+ text encoder), one seeded generator, a resumable state file
(`state.pt`, data only) written atomically every `checkpoint_every` steps. The result is a
`save_pretrained` StableDiffusionPipeline folder with `training.json` (config, command,
held-out denoising error by timestep) and the loss curve (`loss_curve.csv`, `loss_curve.svg`).
"""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.atomic import atomic_path, atomic_write_text
from ...core.cameras import VIEW_LABELS, view_phrase
from ...core.runtime import load_quietly as quietly
from ..diffusers.byte_tokenizer import write_byte_tokenizer
from .config import TrainConfig
from .data import Dataset, plan_dataset, render_dataset, sample_captions, to_unit
from .loss_curve import write_loss_curve

STATE_FORMAT = "threedistill-toyworld-sd-training"
STATE_VERSION = 1


# ---------------------------------------------------------------------- models
def build_models(config: TrainConfig, tokenizer_dir: Path) -> dict[str, Any]:
    """Fresh VAE, UNet, text encoder, tokenizer and DDIM scheduler (SD's schedule) from the seed."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    write_byte_tokenizer(tokenizer_dir, config.max_length)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    n = len(tokenizer)
    levels = len(config.vae_channels)
    torch.manual_seed(config.seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=config.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=1, norm_num_groups=8, sample_size=config.resolution,
    )
    ch = config.unet_channels
    unet = UNet2DConditionModel(
        sample_size=config.resolution // 2 ** (levels - 1), in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=ch, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(ch) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(ch) - 1) + ("UpBlock2D",),
        cross_attention_dim=config.text_hidden, attention_head_dim=8, norm_num_groups=16,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=n, hidden_size=config.text_hidden, intermediate_size=2 * config.text_hidden,
        num_hidden_layers=config.text_layers, num_attention_heads=4, max_position_embeddings=config.max_length,
        projection_dim=config.text_hidden, bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1,
    ))
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------- training
class Trainer:
    """The two training phases over one resumable state (see the module docstring)."""

    def __init__(self, config: TrainConfig, work_dir: Path, log: Callable[[str], None] = print,
                 render_on_demand: bool = False) -> None:
        self.config = config
        self.render_on_demand = render_on_demand
        """Render each training image when a step first draws it (and cache no data.pt): a few
        steps then cost a few renders (the loss-curve reproduction test); the UNet phase renders all."""
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.models = build_models(config, self.work_dir / "tokenizer")
        self.vae = self.models["vae"]
        self.unet = self.models["unet"]
        self.text_encoder = self.models["text_encoder"]
        self.tokenizer = self.models["tokenizer"]
        self.alphas_cumprod = self.models["scheduler"].alphas_cumprod.float()
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
        self.unet_opt = torch.optim.AdamW(list(self.unet.parameters()) + list(self.text_encoder.parameters()),
                                          lr=config.unet_lr, weight_decay=0.01)
        self.ema = {k: v.detach().clone() for k, v in self._unet_and_text().items()}
        self.gen = torch.Generator().manual_seed(config.seed + 1)
        self.rng = random.Random(config.seed + 2)
        self.phase, self.step = "vae", 0
        self.losses: dict[str, list[float]] = {"vae": [], "unet": []}
        self.scaling_factor = 1.0
        self.latents: Optional[Tensor] = None
        self._token_cache: dict[str, Tensor] = {}
        self.data: Optional[Dataset] = None
        """The rendered data, once `train` has read them."""

    # ------------------------------------------------------------------ state
    def _unet_and_text(self) -> dict[str, Tensor]:
        out = {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
        out.update({f"text.{k}": v for k, v in self.text_encoder.state_dict().items()})
        return out

    @property
    def state_path(self) -> Path:
        return self.work_dir / "state.pt"

    def save_state(self) -> None:
        state = {
            "format": STATE_FORMAT, "version": STATE_VERSION, "config": json.dumps(asdict(self.config)),
            "phase": self.phase, "step": self.step, "losses": self.losses, "scaling_factor": self.scaling_factor,
            "vae": self.vae.state_dict(), "vae_opt": self.vae_opt.state_dict(),
            "unet": self.unet.state_dict(), "text_encoder": self.text_encoder.state_dict(),
            "unet_opt": self.unet_opt.state_dict(), "ema": self.ema,
            "gen": self.gen.get_state(), "rng": json.dumps(self.rng.getstate()),
        }
        with atomic_path(self.state_path) as tmp:
            torch.save(state, tmp)

    def load_state(self) -> bool:
        """Resume from `state.pt` when it exists and was written with the same config."""
        if not self.state_path.exists():
            return False
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(f"{self.state_path} is not a toyworld-sd training state of version {STATE_VERSION}")
        if json.loads(state["config"]) != json.loads(json.dumps(asdict(self.config))):
            raise ValueError(f"{self.state_path} was written with another config; pass another --work folder or delete it")
        self.phase, self.step, self.losses = state["phase"], int(state["step"]), state["losses"]
        self.scaling_factor = float(state["scaling_factor"])
        self.vae.load_state_dict(state["vae"])
        self.vae_opt.load_state_dict(state["vae_opt"])
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.unet_opt.load_state_dict(state["unet_opt"])
        self.ema = state["ema"]
        self.gen.set_state(state["gen"])
        rng_state = json.loads(state["rng"])
        self.rng.setstate((rng_state[0], tuple(rng_state[1]), rng_state[2]))
        self.log(f"resumed: {self.phase} phase, step {self.step}")
        return True

    # ------------------------------------------------------------------ data
    def dataset(self) -> Dataset:
        if self.render_on_demand:
            return plan_dataset(self.config)
        path = self.work_dir / "data.pt"
        if path.exists():
            d = torch.load(path, map_location="cpu", weights_only=True)
            if d.get("config") == self._data_key():
                return Dataset(d["images"], d["pair"], d["label"], d["holdout"], [tuple(p) for p in d["pairs"]])  # type: ignore[misc]
        self.log("rendering the training set")
        data = render_dataset(self.config)
        with atomic_path(path) as tmp:
            torch.save({"config": self._data_key(), "images": data.images, "pair": data.pair,
                        "label": data.label, "holdout": data.holdout, "pairs": [list(p) for p in data.pairs]}, tmp)
        return data

    def _data_key(self) -> str:
        """The settings the rendered data depend on."""
        c = self.config
        return json.dumps([c.seed, list(c.objects), list(c.colours), c.views, c.holdout_views, c.resolution])

    def tokens(self, captions: list[str]) -> Tensor:
        missing = [c for c in set(captions) if c not in self._token_cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.config.max_length, truncation=True,
                                 return_tensors="pt").input_ids
            self._token_cache.update(zip(missing, ids))
        return torch.stack([self._token_cache[c] for c in captions])

    # ------------------------------------------------------------------ phases
    def vae_step(self, data: Dataset, train_rows: Tensor) -> float:
        cfg = self.config
        rows = train_rows[torch.randint(len(train_rows), (cfg.vae_batch,), generator=self.gen)]
        x = to_unit(data.image_rows(rows))
        for group in self.vae_opt.param_groups:
            group["lr"] = cfg.vae_lr * lr_factor(self.step, cfg.vae_steps, cfg.warmup)
        dist = self.vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=self.gen)
        recon = self.vae.decode(z).sample
        loss = F.mse_loss(recon, x) + cfg.kl_weight * dist.kl().mean()
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.vae_opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def encode_all(self, data: Dataset) -> Tensor:
        """Unscaled latent means of every render; sets the scaling factor to 1 / their std."""
        self.vae.eval()
        data.render()
        out = [self.vae.encode(to_unit(data.images[i : i + 256])).latent_dist.mean for i in range(0, len(data.images), 256)]
        latents = torch.cat(out)
        self.scaling_factor = float(1.0 / latents[~data.holdout].std())
        return latents

    def unet_step(self, data: Dataset, train_rows: Tensor) -> float:
        cfg = self.config
        assert self.latents is not None
        rows = train_rows[torch.randint(len(train_rows), (cfg.unet_batch,), generator=self.gen)]
        x0 = self.latents[rows] * self.scaling_factor
        tokens = self.tokens(sample_captions(data, rows, cfg, self.rng))
        t = torch.randint(0, 1000, (cfg.unet_batch,), generator=self.gen)
        noise = torch.randn(x0.shape, generator=self.gen)
        a = self.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - self.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
        for group in self.unet_opt.param_groups:
            group["lr"] = cfg.unet_lr * lr_factor(self.step, cfg.unet_steps, cfg.warmup)
        hidden = self.text_encoder(tokens)[0]
        pred = self.unet(a * x0 + s * noise, t, encoder_hidden_states=hidden).sample
        loss = F.mse_loss(pred, noise)
        self.unet_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.unet.parameters()) + list(self.text_encoder.parameters()), 1.0)
        self.unet_opt.step()
        value = float(loss.detach())
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
            for k, v in self._unet_and_text().items():
                if v.dtype.is_floating_point:
                    self.ema[k].lerp_(v, 1 - decay)
                else:
                    self.ema[k].copy_(v)
        return value

    def use_ema(self) -> None:
        """Load the EMA weights into the UNet and text encoder (the weights that ship)."""
        self.unet.load_state_dict({k[5:]: v for k, v in self.ema.items() if k.startswith("unet.")})
        self.text_encoder.load_state_dict({k[5:]: v for k, v in self.ema.items() if k.startswith("text.")})

    def train(self, progress: Optional[Callable[[str, int, int, float], None]] = None) -> None:
        """Both phases from wherever the state left off."""
        cfg = self.config
        self.load_state()
        data = self.dataset()
        train_rows = (~data.holdout).nonzero().squeeze(1)
        phases: list[tuple[str, int, Callable[[Dataset, Tensor], float]]] = [
            ("vae", cfg.vae_steps, self.vae_step), ("unet", cfg.unet_steps, self.unet_step)]
        following = {"vae": "unet", "unet": "done"}
        for name, total, step_fn in phases:
            if self.phase != name:  # finished before a resume
                continue
            if name == "unet":
                self.latents = self.encode_all(data)
                self.vae.requires_grad_(False)
            (self.vae if name == "vae" else self.unet).train()
            while self.step < total:
                loss = step_fn(data, train_rows)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"{name} loss is {loss} at step {self.step}; lower the learning rate")
                self.losses[name].append(loss)
                self.step += 1
                if progress is not None:
                    progress(name, self.step, total, loss)
                if self.step % cfg.checkpoint_every == 0 and self.step < total:
                    self.save_state()
            self.phase, self.step = following[name], 0
            self.save_state()
        if self.latents is None:
            self.latents = self.encode_all(data)
        self.use_ema()
        self.data = data

    # ------------------------------------------------------------------ results
    @torch.no_grad()
    def heldout_error(self, timesteps: tuple[int, ...] = (50, 150, 250, 400, 550, 700, 850, 950)) -> dict[str, float]:
        """Mean squared epsilon error on the held-out renders (correct view phrase) per timestep."""
        assert self.latents is not None
        data = self.data
        assert data is not None, "train() first"
        rows = data.holdout.nonzero().squeeze(1)
        x0 = self.latents[rows] * self.scaling_factor
        captions = [view_phrase(data.prompts(i)[0], VIEW_LABELS[int(data.label[i])]) for i in rows.tolist()]
        hidden = self.text_encoder(self.tokens(captions))[0]
        gen = torch.Generator().manual_seed(1234)
        self.unet.eval()
        out = {}
        for step in timesteps:
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.full((len(rows),), step, dtype=torch.long)
            a, s = self.alphas_cumprod[step].sqrt(), (1 - self.alphas_cumprod[step]).sqrt()
            errs = [F.mse_loss(self.unet(a * x0[i : i + 128] + s * noise[i : i + 128], t[i : i + 128],
                                         encoder_hidden_states=hidden[i : i + 128]).sample, noise[i : i + 128], reduction="sum")
                    for i in range(0, len(rows), 128)]
            out[str(step)] = float(sum(errs) / noise.numel())
        return out

    def save_pipeline(self, out: Path, command: str, dtype: torch.dtype = torch.float16) -> Path:
        """The trained pipeline (EMA weights, in `dtype`) as a diffusers folder, with its records."""
        from diffusers import StableDiffusionPipeline

        self.vae.register_to_config(scaling_factor=self.scaling_factor)
        pipe: Any = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=self.models["scheduler"], safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        out = Path(out)

        def save() -> None:
            pipe.to(dtype=dtype)
            pipe.save_pretrained(str(out), safe_serialization=True)
            pipe.to(dtype=torch.float32)

        quietly(save)
        record = {
            "command": command, "config": asdict(self.config), "scaling_factor": self.scaling_factor,
            "parameters": {k: sum(p.numel() for p in m.parameters()) for k, m in
                           (("unet", self.unet), ("vae", self.vae), ("text_encoder", self.text_encoder))},
            "heldout_eps_mse_by_timestep": self.heldout_error(),
            "final_loss": {k: sum(v[-100:]) / max(1, len(v[-100:])) for k, v in self.losses.items()},
        }
        atomic_write_text(out / "training.json", json.dumps(record, indent=2) + "\n")
        write_loss_curve(out, self.losses)
        return out


def command_line() -> str:
    return " ".join(["python", *sys.argv])


__all__ = ["TrainConfig", "Trainer", "Dataset", "render_dataset", "sample_captions", "build_models"]
