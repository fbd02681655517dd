"""Train toyworld-sd, the small Stable-Diffusion-architecture model behind `--prior toyworld-sd`.

    python tools/train_toyworld_sd.py [--out threedistill/priors/toyworld_sd/model] [--work .toyworld-sd-work]
                                      [--seed 0] [--vae-steps N] [--unet-steps N] [--views N] [--threads N]

Renders the catalogue (every object in every colour word) from the training camera
distribution at 64 px, trains the VAE, then the UNet and text encoder on captioned latents
(threedistill/priors/toyworld_sd/training.py says how). `--work` holds the rendered data and a
resumable state written every --checkpoint-every steps: run the same command again to go on
after an interruption. The result is a diffusers folder (fp16 weights) with training.json
(this command, the config, the held-out denoising error by timestep) and the loss curve.
The shipped model was made with the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from threedistill.priors.toyworld_sd.training import TrainConfig, Trainer, command_line  # noqa: E402

DEFAULT_OUT = ROOT / "threedistill" / "priors" / "toyworld_sd" / "model"


def parse() -> argparse.Namespace:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--work", type=Path, default=ROOT / ".toyworld-sd-work")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    for f in dataclasses.fields(TrainConfig):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, tuple):
            kind = type(value[0]) if value else str
            p.add_argument(flag, type=kind, nargs="+", default=list(value))
        else:
            p.add_argument(flag, type=type(value), default=value)
    return p.parse_args()


def main() -> int:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    trainer = Trainer(config, args.work, log=console.print)
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        tasks: dict[str, int] = {}
        recent: list[float] = []

        def progress(phase: str, step: int, total: int, loss: float) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total, completed=step - 1, loss=loss)
            bar.update(tasks[phase], completed=step, loss=loss)
            recent.append(loss)
            if not console.is_terminal and (step % 100 == 0 or step == total):  # a log file gets a line per 100 steps
                console.print(f"{phase} {step}/{total} loss {sum(recent[-100:]) / len(recent[-100:]):.5f} "
                              f"{time.perf_counter() - start:.0f} s")

        trainer.train(progress)
    out = trainer.save_pipeline(args.out, command_line())
    console.print(f"trained in {time.perf_counter() - start:.0f} s; pipeline in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
