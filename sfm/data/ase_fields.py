"""Where each OC20 field lives on the ASE side, for the ASE datasets and the converters.

Builds on :mod:`sfm.data.atoms` (positions, cell, numbers, tags, ``FixAtoms``) and adds the
labels and every other field:

=============  ===========================================================================
OC20 field     ASE side
=============  ===========================================================================
pos [K,3]      ``atoms.positions`` (A)
cell [1,3,3]   ``atoms.cell`` (rows a, b, c); a structure without 3 lattice vectors is an error
atomic_numbers ``atoms.numbers``
tags [K]       ``atoms.get_tags()`` when the atoms carry tags, else -1 (unknown, the batch
               contract's value: nothing counts as slab or adsorbate)
fixed [K]      atoms held by ``FixAtoms`` (written from :func:`sfm.data.structure.fixed_mask`)
y              ``atoms.calc`` result ``energy`` (eV), when present
force [K,3]    ``atoms.calc`` result ``forces`` (eV/A), when present
sid            ``atoms.info["sid"]`` when present, else the source's own id (row id, frame number)
other fields   scalars and strings <-> ``atoms.info[name]``; per-atom arrays <-> ``atoms.arrays[name]``
               (ase.db keeps both in the row's ``data``, which fairchem reads into ``atoms.info``)
=============  ===========================================================================

Floats become float32 and integers int64 on the way in (the OC20 dtypes). Fields that are
neither per-atom nor scalar (a stored graph: ``edge_index``, ``cell_offsets``, ...) have no
ASE counterpart; :func:`ase_from_data` leaves them out and names them.
"""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from torch_geometric.data import Data

from sfm.data.atoms import atoms_to_data, data_to_atoms
from sfm.data.structure import UNKNOWN_TAG

# Fields held by ASE's own attributes (not copied into info / arrays).
NATIVE_FIELDS = ("pos", "cell", "atomic_numbers", "natoms", "tags", "fixed", "y", "force")
_NATIVE_ARRAYS = ("numbers", "positions", "tags")


def _to_field(value):
    """An info / arrays value as the OC20 type: float32 / int64 / bool tensors, Python scalars."""
    if isinstance(value, np.generic):  # numpy scalars (extxyz info) as Python ones
        return value.item()
    if isinstance(value, (str, bool, int, float)):
        return value
    value = np.asarray(value)
    if value.ndim == 0:
        return value.item()
    if value.dtype.kind == "f":
        return torch.tensor(value, dtype=torch.float32)
    if value.dtype.kind in "iu":
        return torch.tensor(value, dtype=torch.long)
    if value.dtype.kind == "b":
        return torch.tensor(value)
    return value.tolist()


def data_from_ase(atoms: Atoms, sid, where: str, require: tuple[str, ...] = ()) -> Data:
    """One structure of an ASE source as an OC20 ``Data`` (module table); ``sid`` is used when
    ``atoms.info`` has none.

    ``where`` names the structure in errors (``"runs.aselmdb row 12"``). ``require``: fields the
    caller's task needs (``"y"``, ``"force"``, ``"y_relaxed"``, ...); a missing one is a
    ``ValueError`` naming ``where``.
    """
    if atoms.cell.rank < 3:
        raise ValueError(
            f"{where}: no periodic cell (the structure has {atoms.cell.rank} lattice vectors; "
            "sfm needs all three, e.g. a slab with vacuum along c)"
        )
    data = atoms_to_data(atoms)
    if not atoms.has("tags"):
        data.tags = torch.full((len(atoms),), UNKNOWN_TAG, dtype=torch.long)
    results = atoms.calc.results if atoms.calc is not None else {}
    if results.get("energy") is not None:
        data.y = float(results["energy"])
    if results.get("forces") is not None:
        data.force = torch.as_tensor(np.asarray(results["forces"]), dtype=torch.float32)
    for name, value in atoms.arrays.items():
        if name not in _NATIVE_ARRAYS:
            data[name] = _to_field(value)
    for name, value in atoms.info.items():
        if name not in NATIVE_FIELDS:
            data[name] = _to_field(value)
    if "sid" not in data:
        data.sid = sid
    missing = [f for f in require if f not in data]
    if missing:
        have = "energy" if "y" in data else "no energy"
        have += ", forces" if "force" in data else ", no forces"
        raise ValueError(
            f"{where}: missing {missing} that the task needs (the structure has {have}; y / force come "
            f"from the attached calculator results, other fields from atoms.info / arrays)"
        )
    return data


def ase_from_data(data: Data) -> tuple[Atoms, list[str]]:
    """``(atoms, dropped)``: the structure as periodic ``ase.Atoms`` (:func:`sfm.data.atoms.data_to_atoms`)
    with ``y`` / ``force`` in a ``SinglePointCalculator`` and every other field in ``info`` /
    ``arrays``; ``dropped`` names the fields with no ASE counterpart (module doc)."""
    n = data.pos.shape[0]
    atoms = data_to_atoms(data)
    results = {}
    if "y" in data:
        results["energy"] = float(data.y)
    if "force" in data:
        results["forces"] = data.force.double().numpy()
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    dropped = []
    for name in data.keys():
        if name in NATIVE_FIELDS:
            continue
        value = data[name]
        if torch.is_tensor(value) and value.numel() == 1 and not (value.dim() >= 1 and value.shape[0] == n == 1):
            atoms.info[name] = value.item()
        elif torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == n:
            atoms.arrays[name] = value.numpy()
        elif isinstance(value, (str, bool, int, float)):
            atoms.info[name] = value
        else:
            dropped.append(name)
    return atoms, dropped
