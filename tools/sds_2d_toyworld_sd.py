"""SDS on a single latent image through the toyworld-sd UNet, no VAE encoder and no 3D.

    python tools/sds_2d_toyworld_sd.py [--prompt "a yellow duck, front view"] [--steps 400] [--out docs/images/toyworld-sd-sds-2d.png]
    python tools/sds_2d_toyworld_sd.py --inits zeros "a grey ball" "a yellow ball" --settings 1 0 3 --out docs/images/toyworld-sd-sds-2d-init.png

Each row is one timestep setting (label printed), four seeds per row: Adam on a 16x16x4 latent
from a starting latent, the SDS gradient w(t)(e_hat - eps) with w = 1 - abar, then one decode.
It separates what the UNet's score does from what the encoder's Jacobian and multi-view
consistency add. The start is zeros, or (`--inits`) the VAE latents of front views of catalogue
objects; with several starts every row begins with the decoded start.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from threedistill.core.cameras import OrbitSampler, OrbitSamplerConfig  # noqa: E402
from threedistill.core.runtime import load_quietly  # noqa: E402
from threedistill.export.images import save_image_grid  # noqa: E402
from threedistill.priors.toyworld.prior import catalogue_modes, render_ground_truth  # noqa: E402
from threedistill.priors.toyworld_sd.prior import SHIPPED_MODEL  # noqa: E402

SETTINGS = [("t 20-980, CFG 7.5", 20, 980, 7.5), ("t 20-500, CFG 7.5", 20, 500, 7.5),
            ("t 200-980, CFG 7.5", 200, 980, 7.5), ("t 20-980, CFG 30", 20, 980, 30.0),
            ("t max 980 -> 300 annealed, CFG 7.5", 20, None, 7.5), ("t 20-300, CFG 7.5", 20, 300, 7.5)]


@torch.no_grad()
def start_latents(prompt: str, n: int, vae: Any) -> torch.Tensor:
    """Unscaled VAE latent means of n front views (azimuth within 20 degrees) of a catalogue prompt."""
    sampler = OrbitSampler(OrbitSamplerConfig(width=64, height=64, azimuth_range=(-20.0, 20.0), elevation_range=(10.0, 20.0)))
    cams = sampler.sample(torch.Generator().manual_seed(1), batch_size=n)
    image = render_ground_truth(catalogue_modes(prompt)[0], cams, torch.device("cpu")).rgb.clamp(0, 1)
    return vae.encode(image * 2 - 1).latent_dist.mean


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", default="a yellow duck, front view")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("docs/images/toyworld-sd-sds-2d.png"))
    p.add_argument("--inits", nargs="+", default=["zeros"], help="starting latents: zeros, or catalogue prompts rendered from the front")
    p.add_argument("--settings", type=int, nargs="+", default=list(range(len(SETTINGS))), help="rows of SETTINGS to run, by index")
    args = p.parse_args()
    torch.manual_seed(0)
    from diffusers import StableDiffusionPipeline
    pipe = load_quietly(lambda: StableDiffusionPipeline.from_pretrained(str(SHIPPED_MODEL), safety_checker=None,
                                                                        torch_dtype=torch.float32, local_files_only=True))
    unet, vae, abar_all = pipe.unet, pipe.vae, pipe.scheduler.alphas_cumprod

    def embed(texts: list[str]) -> torch.Tensor:
        ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return pipe.text_encoder(ids)[0]

    n = args.seeds
    with torch.no_grad():
        emb = torch.cat([embed([args.prompt]).expand(n, -1, -1), embed([""]).expand(n, -1, -1)])
    sf = vae.config.scaling_factor
    starts = {name: start_latents(name, n, vae) * sf if name != "zeros" else torch.zeros(n, 4, 16, 16) for name in args.inits}
    show_start = len(starts) > 1
    rows = []
    jobs = [(start, SETTINGS[i]) for start in starts.items() for i in args.settings]
    for row, ((init, z0), (label, lo, hi, cfg)) in enumerate(jobs, 1):
        g = torch.Generator().manual_seed(0)
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.03)
        for i in range(args.steps):
            top = hi if hi is not None else int(980 - 680 * i / args.steps)
            t = torch.randint(lo, top + 1, (n,), generator=g)
            eps = torch.randn(z.shape, generator=g)
            abar = abar_all[t].view(-1, 1, 1, 1)
            x_t = abar.sqrt() * z.detach() + (1 - abar).sqrt() * eps
            with torch.no_grad():
                cond, uncond = unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=emb).sample.chunk(2)
            opt.zero_grad()
            z.backward(gradient=(1 - abar) * (uncond + cfg * (cond - uncond) - eps))
            opt.step()
        with torch.no_grad():
            if show_start:
                rows.append((vae.decode(z0[:1] / sf).sample * 0.5 + 0.5).clamp(0, 1))
            rows.append((vae.decode(z / sf).sample * 0.5 + 0.5).clamp(0, 1))
        print(f"row {row}: from {init}, {label}", flush=True)
    save_image_grid(args.out, torch.cat(rows), nrow=n + show_start)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
