"""OC20's slab cutting (fairchem-data-oc's ``Slab`` / ``Bulk``), importable without fairchem-core.

``fairchem.data.oc.core.bulk`` imports ``fairchem.core.scripts.download_large_files`` at import
time, only to download the bulk database when a ``Bulk`` is drawn from it. sfm does not install
fairchem-core (its pinned torch/CUDA wheels) and never downloads: unless a real fairchem-core is
there, a stand-in for that one module is registered whose download raises. Everything else is
fairchem's own code. (:mod:`sfm.data.placements` imports the placement modules its own way.)

    slabs = slabs_from_bulk(bulk_atoms, (1, 1, 1))     # one tagged, held slab per termination
"""

from __future__ import annotations

import importlib.util
import sys
import types

from ase import Atoms

_DOWNLOADER = "fairchem.core.scripts.download_large_files"


def _no_download(*args, **kwargs):
    raise RuntimeError(
        "fairchem-data-oc tried to download its bulk database: sfm runs offline; "
        "give the bulk structure yourself (Bulk(bulk_atoms=...))"
    )


def _bulk_and_slab() -> tuple[type, type]:
    """fairchem-data-oc's ``Bulk`` and ``Slab`` classes (module docstring)."""
    # the stand-in, once registered, is in sys.modules (find_spec of a stand-in module would raise)
    if _DOWNLOADER not in sys.modules and importlib.util.find_spec("fairchem.core") is None:
        for name in ("fairchem.core", "fairchem.core.scripts", _DOWNLOADER):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules[_DOWNLOADER].download_file_group = _no_download
        sys.modules["fairchem.core.scripts"].download_large_files = sys.modules[_DOWNLOADER]
    bulk = importlib.import_module("fairchem.data.oc.core.bulk")
    slab = importlib.import_module("fairchem.data.oc.core.slab")
    return bulk.Bulk, slab.Slab


def slabs_from_bulk(bulk: Atoms, miller: tuple[int, int, int], min_ab: float = 8.0) -> list[Atoms]:
    """The slabs OC20 cuts from ``bulk`` along ``miller`` (one per termination, fairchem's
    ``Slab.from_bulk_get_specific_millers``): tiled to a, b >= ``min_ab`` A, tags 0 (bulk-like)
    and 1 (surface atoms, by Voronoi coordination and height as fairchem tags them), tag-0 atoms
    held by FixAtoms, all three directions periodic."""
    Bulk, Slab = _bulk_and_slab()
    slabs = Slab.from_bulk_get_specific_millers(tuple(int(m) for m in miller), Bulk(bulk_atoms=bulk), min_ab=min_ab)
    return [
        Atoms(
            s.atoms.numbers,
            s.atoms.positions,
            cell=s.atoms.cell.array,
            pbc=True,
            tags=s.atoms.get_tags(),
            constraint=s.atoms.constraints,
        )
        for s in slabs
    ]
