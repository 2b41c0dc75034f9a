"""ase.Atoms <-> Data (sfm/data/atoms.py): the one conversion, checked against ASE's own fields."""

import numpy as np
import torch
from ase.build import add_adsorbate, fcc111, molecule
from ase.constraints import FixAtoms

from sfm.data import atoms_to_data, batch_to_atoms, collate, data_to_atoms


def slab(symbol="Cu", skew=True):
    atoms = fcc111(symbol, size=(2, 3, 3), vacuum=7.0, orthogonal=False, periodic=True)  # oblique a, b
    if skew:
        cell = atoms.cell.array.copy()
        cell[2] += [1.3, -0.7, 0.0]  # tilted c
        atoms.set_cell(cell)
    atoms.set_tags([0 if t > 1 else 1 for t in atoms.get_tags()])
    atoms.set_constraint(FixAtoms(mask=atoms.get_tags() == 0))
    add_adsorbate(atoms, molecule("CO"), height=1.9, position="fcc")
    atoms.set_tags([t if i < 18 else 2 for i, t in enumerate(atoms.get_tags())])
    return atoms


def same(a, b):
    assert np.allclose(a.positions, b.positions, atol=1e-5) and np.allclose(a.cell.array, b.cell.array, atol=1e-5)
    assert (a.numbers == b.numbers).all() and (a.get_tags() == b.get_tags()).all() and a.pbc.all() and b.pbc.all()
    fixed = (
        [set(c.get_indices().tolist()) for c in a.constraints],
        [set(c.get_indices().tolist()) for c in b.constraints],
    )
    assert fixed[0] == fixed[1]


def test_round_trip_keeps_ase_fields():
    atoms = slab()
    data = atoms_to_data(atoms, sid=3)
    assert data.cell.shape == (1, 3, 3) and data.fixed.tolist() == (atoms.get_tags() == 0).tolist() and data.sid == 3
    same(data_to_atoms(data), atoms)
    moved = data.pos + 0.25
    assert np.allclose(data_to_atoms(data, moved).positions, moved.double().numpy())


def test_batch_to_atoms_is_data_to_atoms_per_structure():
    structures = [slab("Cu"), slab("Pt", skew=False)]
    batch = collate([atoms_to_data(a) for a in structures])
    for out, atoms in zip(batch_to_atoms(batch), structures):
        same(out, atoms)
    shifted = batch_to_atoms(batch, batch.pos + 1.0)[1]
    assert np.allclose(shifted.positions, structures[1].positions + 1.0, atol=1e-5)


def test_nothing_fixed_means_no_constraint():
    atoms = slab()
    atoms.set_constraint()
    data = atoms_to_data(atoms)
    data.fixed = torch.zeros_like(data.fixed)
    assert data_to_atoms(data).constraints == []
