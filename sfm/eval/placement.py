"""Adsorbate placement: the anomalies that disqualify a relaxed placement (success@k is in
:mod:`sfm.eval.oc20`).

Tags as in OC20: 0 subsurface, 1 surface, 2 adsorbate. Structures: pos [n, 3] A, cell [3, 3]
rows a, b, c, numbers [n] Z. Bonds follow fairchem's DetectTrajAnomaly: atoms i, j are bonded
when their minimum-image distance is below mult * (r_i + r_j) + 0.6 A, with r the ASE
covalent radii (natural_cutoffs) and 0.6 A the two 0.3 A skins ASE's NeighborList adds.
"""

from __future__ import annotations

import torch
from ase.data import covalent_radii
from torch import Tensor

from sfm.data.lattice import cart_to_frac, minimum_image

SKIN = 0.3  # A per atom, ASE NeighborList default, kept for parity with fairchem


def connectivity(numbers: Tensor, pos: Tensor, cell: Tensor, mult: float = 1.0) -> Tensor:
    """[n, n] bool bond matrix (no self bonds), minimum image, rule in the module docstring."""
    pos, cell = pos.double(), cell.double()
    radius = torch.as_tensor(covalent_radii, dtype=torch.float64)[numbers.long().cpu()] * mult + SKIN
    dist = minimum_image(cart_to_frac(pos[None, :] - pos[:, None], cell), cell).norm(dim=-1)
    bonded = dist < radius[:, None] + radius[None, :]
    return bonded & ~torch.eye(len(numbers), dtype=torch.bool)


def adsorbate_desorbed(numbers, pos, cell, tags, mult: float = 1.5) -> bool:
    """No adsorbate atom bonded to any slab atom (bond cutoffs scaled by 1.5, as AdsorbML)."""
    ads = tags == 2
    return not bool(connectivity(numbers, pos, cell, mult)[ads][:, ~ads].any())


def adsorbate_dissociated(numbers, init_pos, final_pos, cell, tags, mult: float = 1.0) -> bool:
    """The adsorbate's own bond graph differs between the initial and the final structure."""
    ads = tags == 2
    before = connectivity(numbers[ads], init_pos[ads], cell, mult)
    return not torch.equal(before, connectivity(numbers[ads], final_pos[ads], cell, mult))


def slab_max_displacement(init_pos, final_pos, cell, tags) -> float:
    """Largest minimum-image displacement of a slab atom (tags 0 and 1) in A (0 if none)."""
    slab = tags != 2
    if not slab.any():
        return 0.0
    dfrac = cart_to_frac((final_pos[slab] - init_pos[slab]).double(), cell.double())
    return minimum_image(dfrac, cell.double()).norm(dim=-1).max().item()


def anomalies(numbers, init_pos, final_pos, cell, tags, slab_threshold: float = 1.0) -> dict[str, bool]:
    """Flags of one relaxation: desorbed, dissociated, slab_moved (a slab atom moved more than
    `slab_threshold` A), and `any` of them."""
    out = {"desorbed": adsorbate_desorbed(numbers, final_pos, cell, tags),
           "dissociated": adsorbate_dissociated(numbers, init_pos, final_pos, cell, tags),
           "slab_moved": slab_max_displacement(init_pos, final_pos, cell, tags) > slab_threshold}
    out["any"] = any(out.values())
    return out
