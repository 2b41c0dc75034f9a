"""Referencing total energies, so that total-energy data trains like OC20's referenced energies.

Two rules, one file format (JSON ``{"element": eV, ...}``, e.g. ``{"H": -3.48, "O": -7.20}``):

- ``atoms="all"`` (per-element linear references): ``y - sum_i ref[Z_i]`` over every atom;
- ``atoms="adsorbate"`` (gas references, OC20's adsorption energy): ``y - E_slab - sum_i ref[Z_i]``
  over the adsorbate atoms (``tags == 2``), with ``E_slab`` the structure's ``slab_energy``
  field (``atoms.info`` / the row's data).

The same shift applies to ``y``, ``y_init`` and ``y_relaxed`` (each is an energy of the same atoms).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ase.data import atomic_numbers, chemical_symbols
from torch_geometric.data import Data

from sfm.data.structure import ADSORBATE_TAG

ENERGY_FIELDS = ("y", "y_init", "y_relaxed")
RULES = ("all", "adsorbate")


class EnergyReference:
    """Per-element reference energies (eV) applied by one of :data:`RULES` (module doc)."""

    def __init__(self, energies: dict[str, float], atoms: str = "all", source: str = "references"):
        if atoms not in RULES:
            raise ValueError(f"energy reference rule {atoms!r}: expected one of {RULES}")
        unknown = [s for s in energies if s not in atomic_numbers]
        if unknown:
            raise ValueError(f"{source}: unknown element symbol(s) {unknown}")
        self.by_number = {atomic_numbers[s]: float(e) for s, e in energies.items()}
        self.atoms = atoms
        self.source = source

    @classmethod
    def load(cls, path: str | os.PathLike, atoms: str = "all") -> "EnergyReference":
        """References from a JSON file ``{"element": eV}``."""
        return cls(json.loads(Path(path).read_text()), atoms, source=str(path))

    def shift(self, data: Data, where: str) -> float:
        """The energy (eV) to subtract from ``data``'s energies; errors name ``where``."""
        numbers = data.atomic_numbers
        slab = 0.0
        if self.atoms == "adsorbate":
            numbers = numbers[data.tags == ADSORBATE_TAG]
            if "slab_energy" not in data:
                raise ValueError(f"{where}: gas references need the clean slab's energy in a 'slab_energy' field")
            slab = float(data.slab_energy)
        missing = sorted(
            {chemical_symbols[z] for z in numbers.tolist()} - {chemical_symbols[z] for z in self.by_number}
        )
        if missing:
            raise KeyError(f"{where}: no reference energy for {missing} in {self.source}")
        return slab + sum(self.by_number[z] for z in numbers.tolist())

    def __call__(self, data: Data, where: str) -> Data:
        """``data`` with every energy field referenced (in place; returned for chaining)."""
        shift = self.shift(data, where)
        for field in ENERGY_FIELDS:
            if field in data:
                data[field] = float(data[field]) - shift
        return data
