"""How well toyworld-sd knows toyworld: DDIM samples classified by their nearest toyworld render.

    python tools/eval_toyworld_sd.py [--model PATH] [--samples N] [--steps 50] [--cfg 7.5]
                                     [--grid docs/images/toyworld-sd-samples.png] [--json PATH]

Samples through diffusers' StableDiffusionPipeline (DDIM, CFG), for
(a) every catalogue prompt with every view phrase ("a blue mug, side view"), and
(b) every object in every colour word, front view ("a green mug, front view").
Each sample is matched to its nearest neighbour (pixel L2) among fresh renders of every
(object, colour) from the training camera distribution (a seed the model never saw); the
match gives the sample's object, colour and view label. Prints object / colour / view accuracy
and writes the grid of (a) (one row per object, front / side / back / overhead) and a JSON record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from threedistill.core.cameras import VIEW_LABELS, view_phrase  # noqa: E402
from threedistill.core.runtime import load_quietly  # noqa: E402
from threedistill.export.images import save_image_grid  # noqa: E402
from threedistill.priors.toyworld.catalogue import CATALOGUE, COLOURS, catalogue_prompts  # noqa: E402
from threedistill.priors.toyworld_sd.prior import SHIPPED_MODEL  # noqa: E402
from threedistill.priors.toyworld_sd.config import TrainConfig  # noqa: E402
from threedistill.priors.toyworld_sd.data import article, colourless_colours, render_dataset  # noqa: E402


def sample(pipe, prompts: list[str], steps: int, cfg: float, seed: int, batch: int = 64) -> torch.Tensor:
    out = []
    for i in range(0, len(prompts), batch):
        gen = torch.Generator().manual_seed(seed + i)
        images = pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=cfg, height=64, width=64,
                      generator=gen, output_type="pt").images
        out.append(images.float().cpu())
    return torch.cat(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(SHIPPED_MODEL))
    p.add_argument("--samples", type=int, default=2, help="samples per prompt")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference-views", type=int, default=32)
    p.add_argument("--grid", type=Path, default=ROOT / "docs" / "images" / "toyworld-sd-samples.png")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "toyworld-sd-quality.json")
    args = p.parse_args()
    import diffusers
    import transformers
    from diffusers import StableDiffusionPipeline

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    pipe = load_quietly(lambda: StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32, local_files_only=True))
    pipe.set_progress_bar_config(disable=True)
    refs = render_dataset(TrainConfig(seed=10_000, views=args.reference_views, holdout_views=0))
    ref_x = refs.images.float().flatten(1) / 255.0

    names = list(CATALOGUE)
    view_prompts = [(name, prompt, label) for name, prompt in zip(names, catalogue_prompts()) for label in VIEW_LABELS]
    colour_prompts = [(name, article(f"{colour} {name}"), "front") for name in names for colour in COLOURS]
    rows = []
    for group, items in (("views", view_prompts), ("colours", colour_prompts)):
        texts = [view_phrase(prompt, label) for _, prompt, label in items for _ in range(args.samples)]
        images = sample(pipe, texts, args.steps, args.cfg, args.seed)
        nearest = torch.cdist(images.flatten(1), ref_x).argmin(1)
        for k, (name, prompt, label) in enumerate(i for i in items for _ in range(args.samples)):
            got_name, got_colour = refs.pairs[int(refs.pair[nearest[k]])]
            wanted = [prompt.split()[1]] if prompt.split()[1] in COLOURS else list(colourless_colours(name))
            rows.append({"group": group, "prompt": view_phrase(prompt, label), "object_ok": got_name == name,
                         "colour_ok": got_colour in wanted, "view_ok": VIEW_LABELS[int(refs.label[nearest[k]])] == label,
                         "nearest": f"{got_colour} {got_name}"})
        if group == "views":
            first = images.view(len(items), args.samples, *images.shape[1:])[:, 0]
            args.grid.parent.mkdir(parents=True, exist_ok=True)
            save_image_grid(args.grid, first, nrow=len(VIEW_LABELS))

    def accuracy(group: str, key: str) -> float:
        chosen = [r[key] for r in rows if r["group"] == group]
        return sum(chosen) / len(chosen)

    summary = {group: {k: round(accuracy(group, f"{k}_ok"), 3) for k in ("object", "colour", "view")} for group in ("views", "colours")}
    record = {"model": args.model, "samples_per_prompt": args.samples, "ddim_steps": args.steps, "cfg": args.cfg,
              "summary": summary, "seconds": round(time.perf_counter() - start, 1), "samples": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print("| prompts | samples | object | colour | view |\n|---|---|---|---|---|")
    for group, label in (("views", "catalogue prompt x view phrase"), ("colours", "object x colour word, front view")):
        n = sum(r["group"] == group for r in rows)
        s = summary[group]
        print(f"| {label} | {n} | {s['object']:.0%} | {s['colour']:.0%} | {s['view']:.0%} |")
    print(f"grid: {args.grid}; record: {args.json}; {record['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
