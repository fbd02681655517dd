"""Which catalogue object an image shows: image-to-3D on toyworld (`--image PATH --prior toyworld`).

The image's mask is compared with every catalogue object's silhouette rendered from the
reference camera (mask IoU), and among the objects whose silhouette fits best (within
`SHAPE_TOLERANCE` of the best) every colour word is tried: the object and colour whose render
has the highest PSNR against the image are the answer, returned as a toyworld prompt
("a yellow duck"). The run is then distilled from, and scored against, that object: the prior is
conditioned on the image through the object it shows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core.types import ReferenceImage
from ...eval.metrics import mask_iou, psnr
from ...render.mesh_torch import render_mesh
from .catalogue import CATALOGUE, COLOURS, resolve_prompt

SHAPE_TOLERANCE = 0.02
"""Objects whose silhouette IoU is within this of the best are told apart by colour."""
RESOLUTION = 64


def _article(words: str) -> str:
    return "an" if words[0] in "aeiou" else "a"


def identify_catalogue_object(reference: ReferenceImage, device: torch.device) -> str:
    """The toyworld prompt (colour and object) whose render from the reference camera matches the image best."""
    cams = reference.cameras.with_size(RESOLUTION, RESOLUTION).to(device)
    rgb = F.interpolate(reference.rgb.to(device), size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True, align_corners=False)
    mask = F.interpolate(reference.alpha.to(device), size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True, align_corners=False)

    def render(prompt: str) -> tuple[float, float]:
        v, f, c = resolve_prompt(prompt)[0].to_torch(device)
        with torch.no_grad():
            out = render_mesh(v, f, c, cams)
        return mask_iou(out.alpha, mask), psnr(out.rgb, rgb)

    shapes = {name: render(name)[0] for name in CATALOGUE}
    best = max(shapes.values())
    candidates = [f"{_article(c)} {c} {name}" for name, iou in shapes.items() if iou >= best - SHAPE_TOLERANCE for c in COLOURS]
    return max(candidates, key=lambda prompt: render(prompt)[1])
