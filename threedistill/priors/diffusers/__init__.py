"""Diffusers models behind the prior contract, loaded through one path (loading.py)."""
