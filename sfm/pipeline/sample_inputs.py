"""What sampling generates from: entries of an OC20 LMDB split, or a list of compositions.

An input is a PyG ``Data`` with ``atomic_numbers [n]`` long, ``natoms``, ``tags [n]`` long,
``fixed [n]`` bool and ``sid``.

- From an LMDB (:class:`LmdbInputs`) it is the stored entry: it also has ``pos [n, 3]``
  (A) and ``cell [1, 3, 3]``, which the conditional modes take as the given atoms and the
  given lattice, and whatever else is stored (``pos_relaxed``, energies, ...).
- From compositions (:class:`CompositionInputs`) there is no cell and no position: crystal
  structure prediction only. ``sid`` is the composition's index in the list and
  ``formula`` its text; tags are 0 and nothing is fixed (a bulk crystal has no slab).

Composition syntax: formulas as pymatgen reads them (``"Cu3Au"``, ``"NaCl"``), comma- or
whitespace-separated, or a file with one per line (``#`` starts a comment). The atom count
is the formula as written, times ``formula_units``; or, with ``num_atoms``, the reduced
formula scaled to exactly that many atoms.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from pymatgen.core import Composition, Element
from torch_geometric.data import Data

from sfm.data import open_dataset
from sfm.data.structure import fixed_mask, sid_of


class LmdbInputs:
    """The first ``max_inputs`` (all if None) entries of an OC20 LMDB, as validated ``Data``."""

    has_structure = True

    def __init__(self, path: str | os.PathLike, max_inputs: int | None = None, dictionary=None):
        self.dataset = open_dataset(path, dictionary)
        self.size = len(self.dataset) if max_inputs is None else min(len(self.dataset), int(max_inputs))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Data:
        if not 0 <= i < self.size:
            raise IndexError(f"input {i} out of range ({self.size} inputs)")
        data = self.dataset[i]
        data.fixed = fixed_mask(data)
        return data

    def sid(self, i: int):
        """System id of input ``i`` (a tensor sid as a Python number)."""
        return sid_of(self[i])


def parse_compositions(spec: str) -> list[str]:
    """Formulas from a file (one per line, ``#`` comments) or a comma/whitespace-separated string."""
    path = Path(spec)
    text = path.read_text() if path.is_file() else spec
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    formulas = [f for line in lines for f in line.replace(",", " ").split()]
    if not formulas:
        raise ValueError(f"no composition in {spec!r}")
    return formulas


def composition_numbers(formula: str, num_atoms: int | None = None, formula_units: int | None = None) -> list[int]:
    """Atomic numbers (grouped by element, in the formula's order) of ``formula``; see the module doc."""
    try:
        comp = Composition(formula)
    except Exception as err:  # pymatgen raises several types for unparsable text
        raise ValueError(f"cannot read composition {formula!r}: {err}") from None
    unknown = [str(el) for el in comp if not isinstance(el, Element)]
    if unknown:
        raise ValueError(f"cannot read composition {formula!r}: {unknown} are not elements")
    if num_atoms is not None and formula_units is not None:
        raise ValueError("give num_atoms or formula_units, not both")
    if num_atoms is not None:
        reduced = comp.reduced_composition
        units = num_atoms / reduced.num_atoms
        if abs(units - round(units)) > 1e-8 or round(units) < 1:
            raise ValueError(
                f"{num_atoms} atoms is not a whole number of {reduced.reduced_formula} units "
                f"({int(reduced.num_atoms)} atoms each)"
            )
        comp = reduced * round(units)
    elif formula_units is not None:
        comp = comp * int(formula_units)
    numbers = []
    for element, amount in comp.items():
        if abs(amount - round(amount)) > 1e-8:
            raise ValueError(
                f"composition {formula!r} has {amount} {element} atoms: not a whole number "
                "(use num_atoms or formula_units)"
            )
        numbers += [element.Z] * round(amount)
    return numbers


class CompositionInputs:
    """Inputs for crystal structure prediction from formulas (no cell, no positions)."""

    has_structure = False

    def __init__(
        self,
        formulas: list[str],
        num_atoms: int | None = None,
        formula_units: int | None = None,
        max_inputs: int | None = None,
        dictionary=None,
    ):
        formulas = formulas if max_inputs is None else formulas[: int(max_inputs)]
        self.items = []
        for i, formula in enumerate(formulas):
            numbers = torch.tensor(composition_numbers(formula, num_atoms, formula_units), dtype=torch.long)
            if dictionary is not None:
                try:
                    dictionary.indices(numbers)
                except KeyError as err:
                    raise KeyError(f"composition {formula!r}: {err.args[0]}") from None
            n = len(numbers)
            self.items.append(
                Data(
                    atomic_numbers=numbers,
                    natoms=n,
                    tags=torch.zeros(n, dtype=torch.long),
                    fixed=torch.zeros(n, dtype=torch.bool),
                    sid=i,
                    formula=formula,
                    num_nodes=n,
                )
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Data:
        return self.items[i].clone()

    def sid(self, i: int) -> int:
        return i
