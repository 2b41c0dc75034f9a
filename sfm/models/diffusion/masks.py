"""Conditioning masks: which atoms and which lattices are given, and which are generated.

One checkpoint serves three modes, told apart only by these masks (the network reads
them through its conditioning input, ``model.py``):

- ``csp`` (crystal-structure prediction): atom types given; lattice and every
  fractional coordinate generated.
- ``lattice_given``: types and lattice given; every coordinate generated.
- ``inpaint``: types, lattice and a subset of atoms given; the rest generated. The
  subset is ``tags in given_tags`` (default ``(0, 1)``: the slab, so the adsorbate,
  tag 2, is generated) or an explicit per-atom mask.

Given atoms and given lattices are clean inputs in training and are held exactly in
sampling; losses are taken over the generated parts only. Training draws a mode per
structure with the probabilities of ``mode_probs``; a structure drawn for ``inpaint``
whose subset would leave nothing to generate (no adsorbate) is trained as
``lattice_given`` instead.

The atoms' roles (OC20 ``tags``: 0 subsurface, 1 surface, 2 adsorbate) ride along as
conditioning when the batch has them (``-1``: unknown). They are what tells the two
faces of a slab apart: the initial slab is bulk-terminated on both sides, so without
them an adsorbate is as likely generated under the slab as on it. Training hides them
for a structure with probability ``tag_dropout``, so one checkpoint also samples
structures given without tags (compositions).

Shapes: ``atom_given`` ``[N]`` bool, ``lattice_given`` ``[B]`` bool, ``tags`` ``[N]`` long.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sfm.data.structure import SLAB_TAGS, UNKNOWN_TAG, tag_mask

MODES = ("csp", "lattice_given", "inpaint")


@dataclass
class Masks:
    """``atom_given`` ``[N]`` bool, ``lattice_given`` ``[B]`` bool, ``tags`` ``[N]`` long (-1: unknown)."""

    atom_given: torch.Tensor
    lattice_given: torch.Tensor
    tags: torch.Tensor


def _tags(batch) -> torch.Tensor:
    tags = getattr(batch, "tags", None)
    return torch.full_like(batch.batch, UNKNOWN_TAG) if tags is None else tags.long()


def _tag_subset(batch, given_tags) -> torch.Tensor:
    tags = getattr(batch, "tags", None)
    if tags is None:
        raise ValueError("inpaint mode needs `tags` in the batch (or an explicit atom mask)")
    return tag_mask(tags, given_tags)


def mode_masks(batch, mode: str, given_tags=SLAB_TAGS, atom_given: torch.Tensor | None = None) -> Masks:
    """Masks of one mode for every structure in ``batch`` (``batch.batch`` ``[N]``, ``num_graphs`` B).

    ``atom_given`` (``[N]`` bool) overrides ``given_tags`` in ``inpaint`` mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    n, b = batch.batch.numel(), batch.num_graphs
    device = batch.batch.device
    lattice_given = torch.full((b,), mode != "csp", dtype=torch.bool, device=device)
    if mode != "inpaint":
        return Masks(torch.zeros(n, dtype=torch.bool, device=device), lattice_given, _tags(batch))
    given = atom_given.to(device=device, dtype=torch.bool) if atom_given is not None else _tag_subset(batch, given_tags)
    return Masks(given, lattice_given, _tags(batch))


def training_masks(
    batch, mode_probs: dict[str, float], given_tags=SLAB_TAGS, tag_dropout: float = 0.0, generator=None
) -> Masks:
    """A mode per structure drawn from ``mode_probs`` (``{mode: weight}``), as masks; tags
    hidden per structure with probability ``tag_dropout``."""
    unknown = set(mode_probs) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; modes are {MODES}")
    weights = torch.tensor([float(mode_probs.get(m, 0.0)) for m in MODES])
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"mode_probs need non-negative weights with a positive sum, got {mode_probs}")
    b, device = batch.num_graphs, batch.batch.device
    mode = torch.multinomial(weights, b, replacement=True, generator=generator).to(device)  # [B]
    inpaint = mode == MODES.index("inpaint")
    atom_given = (
        inpaint[batch.batch] & _tag_subset(batch, given_tags)
        if inpaint.any()
        else torch.zeros_like(batch.batch, dtype=torch.bool)
    )
    generated = torch.zeros(b, dtype=torch.long, device=device).index_add_(0, batch.batch, (~atom_given).long())
    atom_given = atom_given & (generated > 0)[batch.batch]  # nothing left to generate: lattice_given
    hide = torch.rand(b, generator=generator).to(device) < tag_dropout
    tags = torch.where(hide[batch.batch], torch.full_like(batch.batch, -1), _tags(batch))
    return Masks(atom_given, mode != MODES.index("csp"), tags)
