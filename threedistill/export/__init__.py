"""Asset export: 3DGS .ply splats, turntable videos, image grids, nerfstudio scenes."""
