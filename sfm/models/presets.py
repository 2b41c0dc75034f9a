"""Named backbone shapes. Values not given take :class:`~sfm.models.backbone.BackboneConfig`'s
defaults. The ``eqv2_*`` presets are the published EquiformerV2 OC20 shapes (fairchem
configs: 128 sphere channels, 8 heads, attention hidden 64 / alpha 64 / value 16, FFN 128,
edge channels 128, 600 Gaussians, radius 12 A, 20 neighbours, grid 18); their names give
the parameter count with the S2EF head (direct forces).
"""

from __future__ import annotations

from dataclasses import fields

from sfm.models.backbone import BackboneConfig

_EQV2 = dict(
    sphere_channels=128,
    num_heads=8,
    attn_hidden_channels=64,
    attn_alpha_channels=64,
    attn_value_channels=16,
    ffn_hidden_channels=128,
    edge_channels=128,
    num_rbf=600,
    rbf_width=2.0,
    cutoff=12.0,
    max_neighbors=20,
    grid_resolution=18,
    alpha_drop=0.1,
    drop_path_rate=0.05,
)

PRESETS: dict[str, dict] = {
    # unit tests: seconds on one CPU core
    "tiny": dict(
        num_layers=2,
        sphere_channels=16,
        lmax=2,
        mmax=1,
        num_heads=2,
        attn_hidden_channels=16,
        attn_alpha_channels=8,
        attn_value_channels=8,
        ffn_hidden_channels=16,
        edge_channels=16,
        num_rbf=32,
        cutoff=6.0,
        max_neighbors=16,
        grid_resolution=18,
    ),
    # CPU training recipes (~0.5M parameters with the S2EF head)
    "small": dict(
        num_layers=3,
        sphere_channels=32,
        lmax=2,
        mmax=2,
        num_heads=4,
        attn_hidden_channels=32,
        attn_alpha_channels=16,
        attn_value_channels=8,
        ffn_hidden_channels=64,
        edge_channels=32,
        num_rbf=64,
        cutoff=6.0,
        max_neighbors=20,
        grid_resolution=18,
    ),
    "eqv2_31m": dict(_EQV2, num_layers=8, lmax=4, mmax=2),
    "eqv2_83m": dict(_EQV2, num_layers=12, lmax=6, mmax=2),
    "eqv2_153m": dict(_EQV2, num_layers=20, lmax=6, mmax=3, drop_path_rate=0.1),
}


def make_backbone_config(model_type: str, **overrides) -> BackboneConfig:
    """``BackboneConfig`` of preset ``model_type`` with ``overrides`` (config field names)."""
    if model_type not in PRESETS:
        raise KeyError(f"unknown model_type {model_type!r}; presets: {sorted(PRESETS)}")
    known = {f.name for f in fields(BackboneConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown backbone options {sorted(unknown)}; known: {sorted(known)}")
    return BackboneConfig(**{**PRESETS[model_type], **overrides})
