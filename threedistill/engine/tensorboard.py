"""`--log.tensorboard`: a loop callback (engine/callbacks.py) that writes RUN_DIR/tensorboard.

- scalars: every metrics.jsonl row's values (loss, its terms, t_mean, grad_norm, num_points) under
  `train/`, and each stage's final scores under `eval/`;
- images: the training-view grid every `log.preview_every` steps (`previews`);
- the turntable as a video (`turntable`, an animated GIF, as TensorBoard shows videos).

Steps are counted over the whole run, so a staged run reads as one curve; a resumed run drops
what the interrupted one logged after its checkpoint (`purge_step`). Needs the [tensorboard] extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from ..core.extras import require
from ..export.images import image_grid
from .callbacks import LoopCallback

if TYPE_CHECKING:
    from .loop import StageTrainer


class TensorboardLogger(LoopCallback):
    """Writes the run's scalars, previews and turntable for TensorBoard (see the module docstring)."""

    def __init__(self) -> None:
        require("tensorboard", "tensorboard", "--log.tensorboard")
        self._writer: Any = None
        self._offset = 0
        self._trainer: Optional["StageTrainer"] = None

    def on_stage_start(self, trainer: "StageTrainer") -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._trainer = trainer
        self._offset = sum(stage.cfg.steps for stage in trainer.context.plan[:trainer.index])
        if self._writer is None:
            resumed = self._offset + trainer.step
            self._writer = SummaryWriter(str(trainer.run_dir / "tensorboard"), purge_step=resumed if resumed else None)

    def on_step(self, trainer: "StageTrainer", logs: dict[str, float]) -> None:
        log, step = trainer.cfg.log, trainer.step
        at = self._offset + step
        if log.log_every and step % log.log_every == 0:
            for key, value in {**logs, "num_points": float(trainer.representation.num_points)}.items():
                self._writer.add_scalar(f"train/{key}", value, at)
        if log.preview_every and step % log.preview_every == 0 and trainer.last_render is not None:
            images, nrow = trainer.preview_grid()
            self._writer.add_image("previews", image_grid(images, nrow=nrow), at, dataformats="HWC")

    def on_stage_end(self, trainer: "StageTrainer", summary: dict[str, Any]) -> None:
        prefix = f"eval/{trainer.stage.label}/" if trainer.staged else "eval/"
        for key, value in summary.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(prefix + key, value, self._offset + trainer.step)
        self._writer.flush()

    def on_run_end(self, run_dir: Path, summary: dict[str, Any], exported: Sequence[Path]) -> None:
        gif = run_dir / "export" / "turntable.gif"
        if gif.exists() and self._trainer is not None:
            self._write_gif("turntable", gif.read_bytes(), self._offset + self._trainer.step)
        self._writer.flush()

    def _write_gif(self, tag: str, data: bytes, step: int) -> None:
        """An animated GIF as an image summary: what TensorBoard plays as a video (torch's add_video
        writes the same, but needs moviepy to encode it; the export has already encoded it)."""
        import io

        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        summary = Summary(value=[Summary.Value(tag=tag, image=Summary.Image(height=height, width=width, colorspace=3,
                                                                             encoded_image_string=data))])
        self._writer._get_file_writer().add_summary(summary, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
