"""Batching structures of different sizes into one PyG ``Batch``: the batch contract.

Every model, sampler, relaxation and metric reads batches made here and relies on these
fields as stated; none re-derives them (N atoms, B structures; A, eV):

| field | shape, dtype | meaning |
| --- | --- | --- |
| ``pos`` | ``[N, 3]`` float | Cartesian positions (A), as stored |
| ``cell`` | ``[B, 3, 3]`` float | one lattice per structure, rows = lattice vectors a, b, c (A) |
| ``frac`` | ``[N, 3]`` float | fractional coordinates of ``pos`` in ``cell``, wrapped to ``[0, 1)`` |
| ``fixed`` | ``[N]`` bool | the stored ``fixed``, else ``tags == 0`` (:func:`sfm.data.structure.fixed_mask`) |
| ``tags`` | ``[N]`` long | 0 subsurface, 1 surface, 2 adsorbate; -1 where the entry has none |
| ``atomic_numbers`` | ``[N]`` long | Z |
| ``natoms`` | ``[B]`` long | atoms per structure |
| ``sid`` | ``[B]`` long (if stored) | the system id, an integer (OC20's) |
| ``batch``, ``ptr`` | ``[N]``, ``[B+1]`` long | added by PyG: structure of each atom, offsets |

Task fields pass through (per atom concatenated, per structure stacked): ``y``, ``force``
``[N, 3]`` (eV/A), ``y_init``, ``y_relaxed``, ``pos_relaxed`` ``[N, 3]``, ``given`` ``[N]``
bool (sampling), ... . ``frac`` is of ``pos`` at collate time: code that moves atoms
(relaxation, sampling) updates ``pos`` and ``frac`` together. ``batch.num_dropped`` (an
int) counts structures skipped for ``max_sites``.
"""

from __future__ import annotations

import copy

import torch
from torch_geometric.data import Batch, Data

from sfm.data.lattice import as_cell, cart_to_frac, wrap_frac
from sfm.data.structure import UNKNOWN_TAG, fixed_mask


def collate(data_list: list[Data], max_sites: int | None = None) -> Batch | None:
    """Batch structures (from :class:`sfm.data.LmdbDataset`) into a PyG ``Batch`` (module docstring).

    Structures with more than ``max_sites`` atoms are skipped; if every structure is
    skipped, returns ``None`` (the caller skips the step). The inputs are not modified.
    Use ``functools.partial(collate, max_sites=...)`` as a DataLoader ``collate_fn``.
    """
    kept = [d for d in data_list if max_sites is None or d.num_nodes <= max_sites]
    if not kept:
        return None
    items = []
    for data in kept:
        data = copy.copy(data)
        data.cell = as_cell(data.cell)[None]
        if getattr(data, "tags", None) is None:
            data.tags = torch.full((data.pos.shape[0],), UNKNOWN_TAG, dtype=torch.long)
        data.fixed = fixed_mask(data)
        data.frac = wrap_frac(cart_to_frac(data.pos, data.cell[0]))
        items.append(data)
    batch = Batch.from_data_list(items)
    batch.num_dropped = len(data_list) - len(kept)
    return batch
