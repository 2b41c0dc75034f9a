"""fairchem-data-oc's structure code (OC20's slab cutting, adsorbate list and placements),
importable without fairchem-core.

``fairchem.data.oc.core`` imports ``fairchem.core.scripts.download_large_files`` at import
time (``bulk.py``), only to download the bulk database when a ``Bulk`` is drawn from it. sfm
does not install fairchem-core (its pinned torch/CUDA wheels) and never downloads: before the
first import, :func:`oc_core` registers a stand-in for that one module whose download raises.
Everything else is fairchem's own code.

    core = oc_core()          # the module fairchem.data.oc.core: Bulk, Slab, Adsorbate, AdsorbateSlabConfig
    atoms, binding = oc20_adsorbate("*OH")
    slabs = slabs_from_bulk(bulk_atoms, (1, 1, 1))
"""

from __future__ import annotations

import functools
import pickle
import sys
import types

import numpy as np
from ase import Atoms

_DOWNLOADER = "fairchem.core.scripts.download_large_files"


def _no_download(*args, **kwargs):
    raise RuntimeError("fairchem-data-oc tried to download its bulk database: sfm runs offline; "
                       "give the bulk structure yourself (Bulk(bulk_atoms=...))")  # fmt: skip


@functools.cache
def oc_core() -> types.ModuleType:
    """The module ``fairchem.data.oc.core`` (module docstring for the stand-in it may need)."""
    try:
        import fairchem.core.scripts.download_large_files  # noqa: F401  (a real fairchem-core)
    except ImportError:
        for name in ("fairchem.core", "fairchem.core.scripts", _DOWNLOADER):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules[_DOWNLOADER].download_file_group = _no_download
        sys.modules["fairchem.core.scripts"].download_large_files = sys.modules[_DOWNLOADER]
    from fairchem.data.oc import core

    return core


@functools.cache
def oc20_adsorbates() -> dict[str, tuple[Atoms, tuple[int, ...]]]:
    """``{SMILES-like name: (atoms, binding atom indices)}`` of the 82 OC20 adsorbates
    (``adsorbates.pkl`` of fairchem-data-oc; names like ``*OH``, ``*CO``, ``*N*NO``)."""
    from fairchem.data.oc.databases.pkls import ADSORBATE_PKL_PATH

    with open(ADSORBATE_PKL_PATH, "rb") as f:
        table = pickle.load(f)
    return {entry[1]: (entry[0], tuple(int(b) for b in np.atleast_1d(entry[2]))) for entry in table.values()}


def oc20_adsorbate(name: str) -> tuple[Atoms, tuple[int, ...]]:
    """(a copy of the atoms, binding indices) of the OC20 adsorbate ``name``; KeyError listing
    the known names if there is none."""
    table = oc20_adsorbates()
    if name not in table:
        raise KeyError(f"{name!r} is not an OC20 adsorbate; known: {' '.join(sorted(table))}")
    atoms, binding = table[name]
    return atoms.copy(), binding


def slabs_from_bulk(bulk: Atoms, miller: tuple[int, int, int], min_ab: float = 8.0) -> list[Atoms]:
    """The slabs OC20 cuts from ``bulk`` along ``miller`` (one per termination, fairchem's
    ``Slab.from_bulk_get_specific_millers``): tiled to a, b >= ``min_ab`` A, tags 0 (bulk-like)
    and 1 (surface, Voronoi and height as fairchem tags them), tag-0 atoms held by FixAtoms."""
    core = oc_core()
    slabs = core.Slab.from_bulk_get_specific_millers(tuple(int(m) for m in miller), core.Bulk(bulk_atoms=bulk),
                                                     min_ab=min_ab)  # fmt: skip
    return [Atoms(s.atoms.numbers, s.atoms.positions, cell=s.atoms.cell.array, pbc=True, tags=s.atoms.get_tags(),
                  constraint=s.atoms.constraints) for s in slabs]  # fmt: skip
