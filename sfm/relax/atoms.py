"""ase.Atoms <-> OC20-style PyG Data, for the calculator, EMT and tests.

Fields as the OC20 LMDBs carry them: pos [N, 3] A, cell [1, 3, 3] (rows a, b, c),
atomic_numbers [N] long, natoms, tags [N] long, fixed [N] bool (from ase FixAtoms).
"""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.constraints import FixAtoms
from torch_geometric.data import Data


def atoms_to_data(atoms: Atoms, dtype=torch.float32, **extra) -> Data:
    """One structure as Data; `fixed` = atoms held by FixAtoms constraints. `extra` added as is."""
    fixed = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed[c.get_indices()] = True
    return Data(pos=torch.as_tensor(atoms.get_positions(), dtype=dtype),
                cell=torch.as_tensor(np.asarray(atoms.get_cell()), dtype=dtype)[None],
                atomic_numbers=torch.as_tensor(atoms.get_atomic_numbers(), dtype=torch.long),
                natoms=len(atoms), tags=torch.as_tensor(atoms.get_tags(), dtype=torch.long),
                fixed=torch.as_tensor(fixed), **extra)


def batch_to_atoms(batch, pos=None) -> list[Atoms]:
    """Each structure of a PyG batch as periodic ase.Atoms (tags, FixAtoms on `fixed`).

    pos: optional [N, 3] to use instead of batch.pos (e.g. relaxed positions).
    """
    pos = (batch.pos if pos is None else pos).detach().cpu().double().numpy()
    cell = batch.cell.detach().cpu().double().numpy().reshape(-1, 3, 3)
    numbers = batch.atomic_numbers.detach().cpu().long().numpy()
    tags = batch.tags.cpu().numpy() if getattr(batch, "tags", None) is not None else None
    fixed = batch.fixed.cpu().numpy().astype(bool) if getattr(batch, "fixed", None) is not None else None
    ptr = batch.ptr.cpu().numpy()
    out = []
    for b in range(len(ptr) - 1):
        s = slice(ptr[b], ptr[b + 1])
        atoms = Atoms(numbers=numbers[s], positions=pos[s], cell=cell[b], pbc=True,
                      tags=None if tags is None else tags[s])
        if fixed is not None:
            atoms.set_constraint(FixAtoms(mask=fixed[s]))
        out.append(atoms)
    return out
