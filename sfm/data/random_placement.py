"""Random adsorbate placements: the baseline generated placements are compared with.

AdsorbML's "random" heuristic in the OC20 setting: keep the slab (tags 0, 1) and the rigid
adsorbate (tag 2) of an input entry at its ``pos``, rotate the adsorbate by a uniform angle
about z (its binding-down orientation kept), move it over a uniformly random point of the
surface cell, and lower it rigidly until its first atom is ``contact`` A from a slab atom
(:func:`sfm.data.demo.contact_height`, with the lateral periodic images). The result is
written as samples of the input's ``sid`` (``sample_idx`` 0..k-1), in the layout of
``gen_oc20.sh``'s samples (``generated`` marks the adsorbate), so ``score_oc20.sh`` reads it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Data

from sfm.data.atoms import data_to_atoms
from sfm.data.demo import contact_height
from sfm.data.lattice import as_cell, cart_to_frac, frac_to_cart, minimum_image, wrap_frac
from sfm.data.structure import ADSORBATE_TAG, fixed_mask

SAMPLER = "random_placement"


def random_placement(entry: Data, rng: np.random.Generator, contact: float = 2.0) -> torch.Tensor:
    """[n, 3] positions (A): ``entry.pos`` with its tag-2 atoms rigidly re-placed (module docstring).

    Raises ValueError if the entry has no adsorbate or no slab atom.
    """
    tags = entry.tags.numpy()
    ads = tags == ADSORBATE_TAG
    if not ads.any() or ads.all():
        raise ValueError(f"sid {entry.sid}: random placement needs adsorbate (tag 2) and slab atoms")
    cell_t = as_cell(entry.cell).double()
    pos_t = entry.pos.double()
    # the stored adsorbate may straddle the cell boundary: make it whole around its first atom
    first = pos_t[ads][:1]
    whole = first + minimum_image(cart_to_frac(pos_t[ads] - first, cell_t), cell_t)
    cell = cell_t.numpy()
    atoms = data_to_atoms(entry)
    mol = atoms[ads]
    mol.positions = whole.numpy()
    centre = mol.positions.mean(axis=0)
    mol.rotate(rng.uniform(0.0, 360.0), "z", center=centre)
    frac_ab = rng.uniform(0.0, 1.0, size=2)
    target = frac_ab[0] * cell[0, :2] + frac_ab[1] * cell[1, :2]
    mol.positions[:, :2] += target - centre[:2]
    slab = atoms[~ads]
    mol.positions[:, 2] += contact_height(slab, mol.positions, np.full(len(mol), contact))
    out = entry.pos.clone()  # slab atoms bit for bit as given
    placed = torch.as_tensor(mol.positions)
    out[torch.as_tensor(ads)] = frac_to_cart(wrap_frac(cart_to_frac(placed, cell_t)), cell_t).to(out.dtype)
    return out


def random_placements(entries, k: int, seed: int = 0, contact: float = 2.0):
    """Yield ``k`` random-placement samples (Data) per entry; sample ``s`` of the entry at
    position ``i`` draws from ``SeedSequence([seed, i, s])``."""
    for i, entry in enumerate(entries):
        fixed = fixed_mask(entry)
        for s in range(k):
            rng = np.random.default_rng(np.random.SeedSequence([seed, i, s]))
            yield Data(
                pos=random_placement(entry, rng, contact),
                cell=as_cell(entry.cell)[None],
                atomic_numbers=entry.atomic_numbers,
                natoms=int(entry.natoms),
                tags=entry.tags,
                fixed=fixed,
                sid=entry.sid,
                sample_idx=s,
                input_index=i,
                generated=entry.tags == ADSORBATE_TAG,
                mode="inpaint",
                sampler=SAMPLER,
                seed=seed,
            )
