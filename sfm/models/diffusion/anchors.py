"""Anchor displacements: where the given atoms and the other generated atoms are, seen from each atom.

An OC20 cell is mostly vacuum. A generated atom drawn uniformly at high noise sits, most
of the time, tens of A from the slab, with no neighbour within the backbone's cutoff
(6-12 A): its features cannot know where the slab is, so its score cannot point there.
These long-range features tell it. For each atom ``i`` and each group of atoms ``G``
(the given atoms, the generated atoms):

    dfrac_iG = mean over j in G, j != i, of wrap(f_j - f_i)      (fractional, each in [-0.5, 0.5))

i.e. the mean nearest-image (by rounding) displacement to the group, and its Cartesian
form ``dfrac @ L``. In a slab the in-plane parts average out and ``dfrac`` points to the
slab's mid-plane. Fractional displacements are rotation invariant (they feed the
conditioning), their Cartesian forms rotate with the structure (they enter the score
head as equivariant vectors); both are unchanged by a common translation and permute
with the atoms, so the symmetry contract holds.

A displacement of exactly half a cell has two nearest images, +1/2 and -1/2, and a perfect
crystal is full of them (atoms at 0 and 1/2): which one rounding picks depends on round-off,
so it would make the features depend on orientation and atom order. Such a tie (within
``HALF_CELL_TIE``) counts as 0, the mean of its two images.

Shapes: ``frac [N, 3]``, ``batch [N]``, ``groups [N, G]`` bool -> ``dfrac [N, G, 3]``,
``count [N, G]`` (members of the group other than the atom itself; ``dfrac`` is 0 where 0).
Cost: dense ``[B, n, n, 3]`` per batch (n the largest structure).
"""

from __future__ import annotations

import torch
from torch_geometric.utils import to_dense_batch

from sfm.models.diffusion.wrapped_normal import wrap_delta

HALF_CELL_TIE = 1e-4  # fractional; far above float32 round-off of frac, far below any real spacing


def anchor_displacements(frac: torch.Tensor, batch: torch.Tensor, groups: torch.Tensor):
    """``(dfrac [N, G, 3], count [N, G])``; see the module doc."""
    dense, present = to_dense_batch(frac, batch)  # [B, n, 3], [B, n]
    member, _ = to_dense_batch(groups.to(frac.dtype), batch)  # [B, n, G], zero on padding
    n = dense.shape[1]
    delta = wrap_delta(dense[:, None, :, :] - dense[:, :, None, :])  # [B, i, j, 3]: f_j - f_i
    delta = torch.where((delta.abs() - 0.5).abs() < HALF_CELL_TIE, torch.zeros_like(delta), delta)
    others = 1.0 - torch.eye(n, dtype=frac.dtype, device=frac.device)  # j != i
    weight = member[:, None, :, :] * others[None, :, :, None]  # [B, i, j, G]
    count = weight.sum(2)  # [B, i, G]
    mean = torch.einsum("bijg,bijc->bigc", weight, delta) / count.clamp(min=1)[..., None]
    return mean[present], count[present]
