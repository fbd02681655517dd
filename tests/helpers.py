"""Small run configurations for fast end-to-end tests."""

from __future__ import annotations

from threedistill.config import parse_run_args

TINY_FLAGS = [
    "--prior", "toyworld",
    "--steps", "6",
    "--prior.num-references", "16",
    "--prior.resolution", "32",
    "--sampler.width", "32",
    "--sampler.height", "32",
    "--sampler.batch-size", "2",
    "--representation.num-points", "300",
    "--log.no-progress",
    "--log.turntable-frames", "4",
    "--log.turntable-resolution", "32",
    "--log.eval-views", "4",
    "--log.preview-every", "3",
    "--log.checkpoint-every", "3",
    "--log.log-every", "1",
    "--log.export-formats", "splat", "video",
    "--device", "cpu",
]


def tiny_config(*extra: str):
    """(names, cfg) of a run that takes a second or two."""
    return parse_run_args([*TINY_FLAGS, *extra])
