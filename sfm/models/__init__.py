"""sfm.models: EquiformerV2-style backbone, S2EF head, presets, ``build_model``.

``sfm.models.diffusion`` (noise processes, diffusion head, samplers) is imported lazily by
``build_model(..., head="diffusion")``.
"""

from sfm.models.backbone import BackboneConfig, EquiformerV2
from sfm.models.build import build_model
from sfm.models.presets import PRESETS, make_backbone_config
from sfm.models.s2ef import S2EFModel

__all__ = ["BackboneConfig", "EquiformerV2", "PRESETS", "S2EFModel", "build_model", "make_backbone_config"]
