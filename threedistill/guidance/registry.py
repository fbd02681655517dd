"""The one table of objectives: name -> (config dataclass, Guidance class)."""

from ..registry import Component, Registry
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
    },
)
