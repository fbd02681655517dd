"""Score-distillation objectives, selected by name from `registry.GUIDANCES`."""
