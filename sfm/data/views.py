"""Energy/force views of an OC20 split: what a structure is labelled with, defined once for
training (:class:`IS2REAsS2EF`) and evaluation (:func:`labelled`).

- ``frames`` (kind ``s2ef``): every stored structure at ``pos`` against ``y`` and ``force``;
- ``relaxed`` (kind ``is2re``): ``pos_relaxed`` against ``y_relaxed``, with zero force on
  the free atoms (a relaxed structure is a minimum: what a model should predict there);
- ``initial`` (kind ``is2re``): ``pos`` against ``y_init``, energy only (no force label).
"""

from __future__ import annotations

import torch
from torch_geometric.data import Data

from sfm.data.structure import fixed_mask

KINDS = ("s2ef", "is2re")
VIEWS = {"s2ef": ("frames",), "is2re": ("relaxed", "initial")}
_NEEDS = {"frames": ("y",), "relaxed": ("pos_relaxed", "y_relaxed"), "initial": ("y_init",)}


def labelled(data: Data, view: str, where: str = "entry") -> Data:
    """One structure of ``view`` (module docstring) with ``pos``, ``y`` (eV), ``fixed`` [K] bool,
    ``sid`` where stored and, except for ``initial``, ``force`` [K, 3] (eV/A). Raises
    ValueError naming ``where`` and the missing label."""
    missing = [f for f in _NEEDS[view] if f not in data]
    if missing:
        if view == "frames" and "y_relaxed" in data:
            hint = " (an IS2RE LMDB? use kind 'is2re')"
        elif view != "frames" and "y" in data:
            hint = " (an S2EF LMDB? use kind 's2ef')"
        else:
            hint = f" (a test split? it stores no {' / '.join(missing)} to evaluate against)"
        raise ValueError(f"{where}: the '{view}' view needs {missing}, not stored{hint}")
    common = dict(
        atomic_numbers=data.atomic_numbers,
        cell=data.cell,
        natoms=data.natoms,
        tags=data.tags,
        fixed=fixed_mask(data),
        **({"sid": data.sid} if "sid" in data else {}),
    )
    if view == "frames":
        return Data(pos=data.pos, y=float(data.y), **common, **({"force": data.force} if "force" in data else {}))
    if view == "relaxed":
        return Data(pos=data.pos_relaxed, y=float(data.y_relaxed), force=torch.zeros_like(data.pos_relaxed), **common)
    return Data(pos=data.pos, y=float(data.y_init), **common)


class IS2REAsS2EF(torch.utils.data.Dataset):
    """IS2RE entries as S2EF training samples: item 2i is entry i ``relaxed``, item 2i+1 entry i
    ``initial``. The initial structure's forces are unknown, so every atom of it is marked
    fixed (the force loss runs over free atoms only) and ``force`` holds zeros as a placeholder."""

    def __init__(self, base):
        self.base = base

    def __len__(self) -> int:
        return 2 * len(self.base)

    def __getitem__(self, i: int) -> Data:
        if i % 2 == 0:
            return labelled(self.base[i // 2], "relaxed", f"entry {i // 2}")
        out = labelled(self.base[i // 2], "initial", f"entry {i // 2}")
        out.force = torch.zeros_like(out.pos)
        out.fixed = torch.ones_like(out.fixed)
        return out
