"""Score a finished toyworld / toyworld-sd run against its true object turned about the vertical axis.

    python tools/score_turned.py RUN_DIR [--step 10]

Prints mask IoU and PSNR on the 16 held-out views for the truth turned by 0, 10, ..., 90 degrees
(the asset's cameras stay put; the truth's azimuths shift). A prior that knows the view only
through text can build the right object at the wrong yaw: a cube that scores best turned by 30
degrees is a cube, turned. metrics.json keeps the unturned score; this is a diagnostic.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from threedistill.core.cameras import heldout_cameras, orbit_cameras  # noqa: E402
from threedistill.engine.load import load_run  # noqa: E402
from threedistill.eval.metrics import mask_iou, psnr  # noqa: E402
from threedistill.priors.toyworld.prior import catalogue_modes, render_ground_truth  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--step", type=int, default=10, help="degrees between turns")
    args = p.parse_args()
    run = load_run(args.run_dir, device="cpu")
    prompt = run.stage.cfg.prompt
    cams = heldout_cameras(16, 64, 64)
    with torch.no_grad():
        render = run.representation.render(cams, run.background)
    matched = run.metrics.get("mode")  # the mode metrics.json scored against (multi-modal prompts)
    mode = catalogue_modes(prompt)[matched if isinstance(matched, int) else 0]
    print(f"{prompt}: truth turned by (degrees), mask IoU, PSNR")
    for turn in range(0, 91, args.step):
        turned = orbit_cameras(cams.elevation, cams.azimuth - turn, cams.distance, torch.rad2deg(cams.fov_y), 64, 64)
        truth = render_ground_truth(mode, turned, torch.device("cpu"))
        print(f"{turn:3d}  {mask_iou(render.alpha, truth.alpha):.3f}  {psnr(render.rgb, truth.rgb):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
