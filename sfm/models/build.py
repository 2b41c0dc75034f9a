"""``build_model``: a named preset plus overrides -> an S2EF or diffusion model."""

from __future__ import annotations

import json
from dataclasses import fields, replace

from torch import nn

from sfm.models.backbone import BackboneConfig, load_tokens
from sfm.models.presets import make_backbone_config

# backbone fields that say how to run, not what the model is (never recorded unless given)
RUNTIME_FIELDS = ("dictionary", "bf16", "checkpoint", "recompute_grid")


def build_model(model_type: str = "tiny", head: str = "s2ef", **overrides) -> nn.Module:
    """Build ``head`` ("s2ef" or "diffusion") on the ``model_type`` backbone preset.

    ``overrides`` are backbone config fields (``lmax=...``, ``cond_dim=...``) or keyword
    arguments of the head class (:class:`~sfm.models.s2ef.S2EFModel`:
    ``forces``, ``energy_coef``, ...; ``sfm.models.diffusion.DiffusionModel``: its own).
    The model gets ``build_kwargs`` (JSON-serialisable: model_type, head, the resolved backbone
    shape, the overrides and the dictionary's token list) with
    ``build_model(**model.build_kwargs)`` rebuilding the same architecture.
    """
    backbone_fields = {f.name for f in fields(BackboneConfig)}
    cfg = make_backbone_config(model_type, **{k: v for k, v in overrides.items() if k in backbone_fields})
    # the token list itself, not a path: a checkpoint rebuilds even if dicts/ changes later
    cfg = replace(cfg, dictionary=load_tokens(cfg.dictionary))
    head_kwargs = {k: v for k, v in overrides.items() if k not in backbone_fields}
    if head == "s2ef":
        from sfm.models.s2ef import S2EFModel

        model = S2EFModel(cfg, **head_kwargs)
    elif head == "diffusion":
        from sfm.models.diffusion import DiffusionModel  # written apart, imported only when asked

        model = DiffusionModel(cfg, **head_kwargs)
    else:
        raise ValueError(f"head must be 's2ef' or 'diffusion', got {head!r}")
    # the resolved shape, not only the overrides: a checkpoint rebuilds as trained even if its preset changes
    shape = {f.name: getattr(cfg, f.name) for f in fields(BackboneConfig) if f.name not in RUNTIME_FIELDS}
    build_kwargs = {"model_type": model_type, "head": head, **shape, **overrides, "dictionary": cfg.dictionary}
    model.build_kwargs = json.loads(json.dumps(build_kwargs))  # fails loudly if not JSON-able
    return model
