"""Image-to-3D: the reference view of `threedistill run --image PATH` (view.py)."""
