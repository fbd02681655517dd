"""Score distillation objectives on shared machinery (base.py), one module per family.

Importing the package registers them in `core.objective.OBJECTIVES`: sds, vsd, esd, ism, tsm,
csd, csm, bsd, dsd, dreammat (PBR materials), recon (MVDream's x0 reconstruction) and dds (dds edits a given source: `threedistill edit-image`,
and the scene objective `scene-dds`).
"""

from . import bsd, csd, dds, dreammat, dsd, ism, recon, sds, vsd  # noqa: F401  (registers the objectives)
