"""ASE's EMT as a batched energy/force fn: exact ground truth for the demo world (tests, judge, bench).

EMT covers Al, Cu, Ag, Au, Ni, Pd, Pt (and non-physical H, C, N, O parameters).
"""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.emt import EMT

from sfm.relax.atoms import batch_to_atoms


def emt_fn(batch):
    """fn(batch) -> (energy [B] eV, forces [N, 3] eV/A), one EMT call per structure.

    Forces are the raw EMT forces (not zeroed on fixed atoms); dtype and device of batch.pos.
    """
    energies, forces = [], []
    for atoms in batch_to_atoms(batch):
        atoms.set_constraint()
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    like = batch.pos
    return (torch.tensor(energies, dtype=like.dtype, device=like.device),
            torch.as_tensor(np.concatenate(forces), dtype=like.dtype, device=like.device))
