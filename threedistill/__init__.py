"""threedistill: text-to-3D/4D by score distillation, with a built-in ground-truth prior."""

__version__ = "0.1.0"
