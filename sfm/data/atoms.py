"""ase.Atoms <-> OC20-style PyG Data: the one conversion every room uses.

Fields as the OC20 LMDBs carry them: pos [N, 3] A, cell [1, 3, 3] (rows a, b, c),
atomic_numbers [N] long, natoms, tags [N] long, fixed [N] bool (ase ``FixAtoms``).
"""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.constraints import FixAtoms
from torch_geometric.data import Data

from sfm.data.lattice import as_cells, check_lattice
from sfm.data.structure import fixed_mask


def atoms_to_data(atoms: Atoms, dtype=torch.float32, **extra) -> Data:
    """One structure as Data; `fixed` = atoms held by FixAtoms constraints. `extra` added as is.

    ValueError naming the structure if its cell is not a usable 3-D cell (sfm's graphs are
    periodic in a, b and c: a molecule or a slab needs a box with vacuum)."""
    cell = np.asarray(atoms.get_cell())
    if atoms.cell.rank < 3:
        raise ValueError(
            f"{atoms.get_chemical_formula()}: sfm needs a 3-D periodic cell (rows a, b, c), this one "
            f"has {atoms.cell.rank} nonzero vector(s): {cell.tolist()}; put a molecule or a slab in a box "
            "with vacuum, e.g. atoms.center(vacuum=10) or atoms.center(vacuum=10, axis=2)"
        )
    check_lattice(torch.as_tensor(cell), name=f"{atoms.get_chemical_formula()}: cell")
    fixed = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed[c.get_indices()] = True
    return Data(
        pos=torch.as_tensor(atoms.get_positions(), dtype=dtype),
        cell=torch.as_tensor(cell, dtype=dtype)[None],
        atomic_numbers=torch.as_tensor(atoms.get_atomic_numbers(), dtype=torch.long),
        natoms=len(atoms),
        tags=torch.as_tensor(atoms.get_tags(), dtype=torch.long),
        fixed=torch.as_tensor(fixed),
        **extra,
    )


def _atoms(numbers, positions, cell, tags, fixed) -> Atoms:
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True, tags=tags)
    if fixed is not None and fixed.any():
        atoms.set_constraint(FixAtoms(mask=fixed))
    return atoms


def data_to_atoms(data, pos: torch.Tensor | None = None) -> Atoms:
    """One structure as periodic ase.Atoms: tags where stored, ``FixAtoms`` on its fixed atoms
    (:func:`sfm.data.structure.fixed_mask`). ``pos``: optional [N, 3] instead of ``data.pos``."""
    tags = data.tags.cpu().numpy() if getattr(data, "tags", None) is not None else None
    return _atoms(
        data.atomic_numbers.detach().cpu().long().numpy(),
        (data.pos if pos is None else pos).detach().cpu().double().numpy(),
        as_cells(data.cell.detach().cpu().double())[0].numpy(),
        tags,
        fixed_mask(data).cpu().numpy(),
    )


def batch_to_atoms(batch, pos: torch.Tensor | None = None) -> list[Atoms]:
    """Each structure of a PyG batch as :func:`data_to_atoms` gives it.

    pos: optional [N, 3] to use instead of batch.pos (e.g. relaxed positions).
    """
    pos = (batch.pos if pos is None else pos).detach().cpu().double().numpy()
    cell = as_cells(batch.cell.detach().cpu().double()).numpy()
    numbers = batch.atomic_numbers.detach().cpu().long().numpy()
    tags = batch.tags.cpu().numpy() if getattr(batch, "tags", None) is not None else None
    fixed = fixed_mask(batch).cpu().numpy()
    ptr = batch.ptr.cpu().numpy()
    return [
        _atoms(numbers[a:b], pos[a:b], cell[g], None if tags is None else tags[a:b], fixed[a:b])
        for g, (a, b) in enumerate(zip(ptr[:-1], ptr[1:]))
    ]
