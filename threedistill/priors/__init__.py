"""Frozen 2D diffusion priors behind one interface (see `base.DiffusionPrior`)."""
