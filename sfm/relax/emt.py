"""ASE's EMT as a batched energy/force fn: exact ground truth for the demo world (tests, judge, bench).

EMT covers Al, Cu, Ag, Au, Ni, Pd, Pt (and non-physical H, C, N, O parameters).
"""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.emt import EMT

from sfm.data.atoms import batch_to_atoms


class EMTFn:
    """fn(batch) -> (energy [B] eV, forces [N, 3] eV/A), one EMT call per structure.

    Keeps one EMT calculator per `batch.sid` (when the batch has sids), so its neighbour list
    is reused from step to step as in an ASE optimiser loop; results do not depend on it.
    Forces are the raw EMT forces (not zeroed on fixed atoms); dtype and device of batch.pos.
    """

    def __init__(self):
        self.calculators = {}

    def __call__(self, batch):
        sids = getattr(batch, "sid", None)
        sids = sids.tolist() if torch.is_tensor(sids) else sids
        energies, forces = [], []
        for b, atoms in enumerate(batch_to_atoms(batch)):
            atoms.set_constraint()
            atoms.calc = EMT() if sids is None else self.calculators.setdefault(sids[b], EMT())
            energies.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces())
        like = batch.pos
        return (
            torch.tensor(energies, dtype=like.dtype, device=like.device),
            torch.as_tensor(np.concatenate(forces), dtype=like.dtype, device=like.device),
        )


def emt_fn(batch):
    """EMT energies and forces of a batch with fresh calculators (see `EMTFn`)."""
    return EMTFn()(batch)
