"""SkinNeighborList gives radius_graph_pbc's edges (same cutoff and cap) at every step of a walk."""

import numpy as np
import pytest
import torch
from ase.build import fcc111

from sfm.data.neighbor_list import SkinNeighborList
from sfm.data.pbc_graph import radius_graph_pbc


def edge_set(edge_index, offsets):
    return set(
        zip(
            edge_index[0].tolist(),
            edge_index[1].tolist(),
            map(tuple, offsets.round().long().tolist()),
        )
    )


def slabs(rattle: float, seed: int = 0):
    """Three OC20-like slabs (oblique 111 cells, vacuum) as (frac [N, 3], lattice [3, 3, 3], batch [N])."""
    rng = np.random.default_rng(seed)
    fracs, lattices, batch = [], [], []
    for i, (metal, size) in enumerate([("Cu", (3, 3, 3)), ("Pt", (2, 3, 4)), ("Au", (3, 2, 3))]):
        slab = fcc111(metal, size=size, vacuum=6.0, periodic=True)
        slab.positions += rng.normal(scale=rattle, size=slab.positions.shape)
        fracs.append(torch.tensor(slab.get_scaled_positions(wrap=False)))
        lattices.append(torch.tensor(slab.cell.array))
        batch += [i] * len(slab)
    return torch.cat(fracs), torch.stack(lattices), torch.tensor(batch)


@pytest.mark.parametrize("max_neighbors", [None, 12])
@pytest.mark.parametrize("rattle", [0.0, 0.1])
def test_edges_equal_a_fresh_search_along_a_walk(max_neighbors, rattle, device):
    """Unrattled slabs have whole shells at equal distances: the cap must keep them whole."""
    frac, lattice, batch = (t.to(device) for t in slabs(rattle))
    nl = SkinNeighborList(5.0, max_neighbors, skin=1.0)
    g = torch.Generator().manual_seed(1)
    for step in range(12):
        edges = nl(frac, lattice, batch)
        fresh = radius_graph_pbc(frac, lattice, batch, 5.0, max_neighbors)
        assert edge_set(*edges) == edge_set(*fresh), f"step {step}"
        move = 0.12 * torch.randn(frac.shape, generator=g, dtype=frac.dtype).to(device)  # A, per coordinate
        frac = frac + torch.linalg.solve(lattice[batch].transpose(1, 2), move[..., None])[..., 0]
    assert 1 < nl.searches < 12  # searched again when atoms moved over half the skin, not every step


def test_keep_drops_whole_structures_and_renumbers():
    frac, lattice, batch = slabs(0.1)
    nl = SkinNeighborList(5.0, 12, skin=1.0)
    nl(frac, lattice, batch)
    kept = batch != 1
    frac, lattice, batch = (
        frac[kept],
        lattice[[0, 2]],
        torch.tensor([0, 1])[batch[kept] // 2],
    )
    nl.keep(kept)
    assert edge_set(*nl(frac, lattice, batch)) == edge_set(*radius_graph_pbc(frac, lattice, batch, 5.0, 12))
    assert nl.searches == 1


def test_a_new_cell_or_atom_set_is_searched_again_and_skin_must_be_positive():
    frac, lattice, batch = slabs(0.1)
    nl = SkinNeighborList(5.0, None, skin=0.5)
    nl(frac, lattice, batch)
    strained = lattice * 1.02
    assert edge_set(*nl(frac, strained, batch)) == edge_set(*radius_graph_pbc(frac, strained, batch, 5.0))
    assert nl.searches == 2
    with pytest.raises(ValueError, match="skin"):
        SkinNeighborList(5.0, skin=0.0)
