"""Render backends: splats (gsplat CUDA / torch), meshes (torch rasteriser)."""
