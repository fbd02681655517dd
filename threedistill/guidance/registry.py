"""The one table of objectives: name -> (config dataclass, Guidance class)."""

from ..scene.objectives import In2NConfig, In2NObjective, PhotometricConfig, PhotometricObjective, SceneDDSConfig, SceneDDSObjective
from ..core.registry import Component, Registry
from .csd import CSDConfig, CSDGuidance, CSMConfig, CSMGuidance
from .dds import DDSConfig, DDSGuidance
from .ism import ISMConfig, ISMGuidance, TSMConfig, TSMGuidance
from .sds import SDSConfig, SDSGuidance
from .vsd import ESDConfig, VSDConfig, VSDGuidance

GUIDANCES = Registry(
    "guidance",
    {
        "sds": Component(SDSConfig, SDSGuidance),
        "vsd": Component(VSDConfig, VSDGuidance),
        "esd": Component(ESDConfig, VSDGuidance),
        "ism": Component(ISMConfig, ISMGuidance),
        "tsm": Component(TSMConfig, TSMGuidance),
        "csd": Component(CSDConfig, CSDGuidance),
        "csm": Component(CSMConfig, CSMGuidance),
        "dds": Component(DDSConfig, DDSGuidance),
        # scene runs (`threedistill edit`): fit posed images, then edit them
        "photometric": Component(PhotometricConfig, PhotometricObjective),
        "scene-dds": Component(SceneDDSConfig, SceneDDSObjective),
        "in2n": Component(In2NConfig, In2NObjective),
    },
)

SCENE_OBJECTIVES = ("photometric", "scene-dds", "in2n")
"""Objectives that fit a scene's posed images (`--sampler.scene`; `threedistill edit`)."""
