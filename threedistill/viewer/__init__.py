"""The web viewer (viser): the live viewer of a training run (live.py) and `threedistill view` (static.py)."""
