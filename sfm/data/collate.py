"""Batching structures of different sizes into one PyG ``Batch``."""

from __future__ import annotations

import copy

from torch_geometric.data import Batch, Data

from sfm.data.lattice import cart_to_frac, wrap_frac


def collate(data_list: list[Data], max_sites: int | None = None) -> Batch | None:
    """Batch structures (from :class:`sfm.data.LmdbDataset`) into a PyG ``Batch``.

    Structures with more than ``max_sites`` atoms are skipped; their number is
    ``batch.num_dropped`` (an int). If every structure is skipped, returns ``None`` (the
    caller skips the step). The inputs are not modified. Besides the stored fields
    (concatenated per atom, stacked per graph; ``batch [N]`` and ``ptr [B+1]`` added by PyG):

    - ``cell`` ``[B, 3, 3]``, one lattice per graph (rows = lattice vectors, A);
    - ``fixed`` ``[N]`` bool, from the stored ``fixed`` if present, else ``tags == 0``;
    - ``frac`` ``[N, 3]`` fractional coordinates of ``pos``, wrapped to ``[0, 1)``.

    Use ``functools.partial(collate, max_sites=...)`` as a DataLoader ``collate_fn``.
    """
    kept = [d for d in data_list if max_sites is None or d.num_nodes <= max_sites]
    if not kept:
        return None
    items = []
    for data in kept:
        data = copy.copy(data)
        data.cell = data.cell.reshape(1, 3, 3)
        data.fixed = data.fixed.bool() if "fixed" in data else data.tags == 0
        data.frac = wrap_frac(cart_to_frac(data.pos, data.cell[0]))
        items.append(data)
    batch = Batch.from_data_list(items)
    batch.num_dropped = len(data_list) - len(kept)
    return batch
