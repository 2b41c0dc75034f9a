import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list

from sfm.data.pbc_graph import CAP_TOLERANCE, cap_neighbors, edge_vectors, radius_graph_pbc

SKEWED = np.array([[10.0, 0, 0], [-4.0, 9.0, 0], [1.5, -2.0, 35.0]])  # OC20-like: oblique, tilted c
TINY = np.array([[2.5, 0, 0], [1.2, 2.2, 0], [0.3, 0.4, 2.1]])  # cutoff spans several images


def _graph(frac, cell, cutoff, device="cpu", **kw):
    frac, cell = torch.tensor(frac, device=device), torch.tensor(cell, device=device)
    batch = torch.zeros(len(frac), dtype=torch.long, device=device)
    edge_index, offsets = radius_graph_pbc(frac, cell[None], batch, cutoff, **kw)
    vec = edge_vectors(frac, cell[None], batch, edge_index, offsets)
    return edge_index.cpu(), offsets.cpu(), vec.cpu()


def _ase_edges(frac, cell, cutoff, pbc):
    atoms = Atoms(numbers=[1] * len(frac), positions=frac @ cell, cell=cell, pbc=pbc)
    i, j, shifts, d = neighbor_list("ijSd", atoms, cutoff)
    return {(a, b, tuple(s)): dist for a, b, s, dist in zip(i.tolist(), j.tolist(), shifts.tolist(), d)}


def _compare(frac, cell, cutoff, pbc=(True, True, True), device="cpu"):
    edge_index, offsets, vec = _graph(frac, cell, cutoff, device, pbc=pbc)
    ours = {
        (i, j, tuple(o)): d
        for j, i, o, d in zip(*edge_index.tolist(), offsets.long().tolist(), vec.norm(dim=1).tolist())
    }
    ref = _ase_edges(frac, cell, cutoff, pbc)
    near_cutoff = {k for k, d in {**ours, **ref}.items() if abs(d - cutoff) < 1e-9}
    assert set(ours) - near_cutoff == set(ref) - near_cutoff
    for key in set(ref) & set(ours):
        assert ours[key] == pytest.approx(ref[key], abs=1e-9)
    assert torch.equal(offsets, offsets.round())
    return edge_index


@pytest.mark.parametrize("seed", range(3))
def test_matches_ase_on_oc20_like_slab(seed, device):
    rng = np.random.default_rng(seed)
    frac = rng.uniform(0, 1, (40, 3)) * [1, 1, 0.4]
    edge_index = _compare(frac, SKEWED, 8.0, device=device)
    assert edge_index.shape[1] > 1000
    _compare(frac, SKEWED, 8.0, pbc=(True, True, False), device=device)  # slab as ASE sees it


def test_matches_ase_on_tiny_cell_and_single_atom():
    rng = np.random.default_rng(3)
    _compare(rng.uniform(0, 1, (3, 3)), TINY, 6.0)
    edge_index = _compare(np.array([[0.3, 0.6, 0.1]]), TINY, 5.0)
    assert edge_index.shape[1] > 20 and (edge_index[0] == edge_index[1]).all()  # only its own images


def test_unwrapped_input_and_nonperiodic_axis():
    rng = np.random.default_rng(4)
    frac = rng.uniform(-1.5, 2.5, (25, 3))
    _compare(frac, SKEWED, 7.0)
    _compare(frac, SKEWED, 7.0, pbc=(True, False, True))
    # same structure wrapped or not: same edges and vectors, offsets re-expressed
    ei_a, off_a, vec_a = _graph(frac, SKEWED, 7.0)
    ei_b, off_b, vec_b = _graph(frac % 1.0, SKEWED, 7.0)
    assert torch.equal(ei_a, ei_b) and torch.allclose(vec_a, vec_b, atol=1e-9)
    assert torch.equal(off_a - off_b, torch.tensor(np.floor(frac))[ei_b[1]] - torch.tensor(np.floor(frac))[ei_b[0]])


def test_batched_graphs_of_different_sizes():
    rng = np.random.default_rng(5)
    fracs = [rng.uniform(0, 1, (n, 3)) for n in (7, 1, 12)]
    cells = [SKEWED, TINY, np.eye(3) * 6.0]
    frac = torch.tensor(np.concatenate(fracs))
    batch = torch.tensor([g for g, f in enumerate(fracs) for _ in f])
    edge_index, offsets = radius_graph_pbc(frac, torch.tensor(np.stack(cells)), batch, 5.0, max_neighbors=6)
    assert (batch[edge_index[0]] == batch[edge_index[1]]).all()
    start = 0
    for f, cell in zip(fracs, cells):
        ei, off, _ = _graph(f, cell, 5.0, max_neighbors=6)
        mine = (edge_index[1] >= start) & (edge_index[1] < start + len(f))
        assert torch.equal(edge_index[:, mine] - start, ei) and torch.equal(offsets[mine], off)
        start += len(f)


def test_max_neighbors_keeps_nearest_k_and_their_ties():
    rng = np.random.default_rng(6)
    frac = rng.uniform(0, 1, (30, 3)) * [1, 1, 0.4]
    kept, _, d_kept = _graph(frac, SKEWED, 8.0, max_neighbors=12)
    ref = _ase_edges(frac, SKEWED, 8.0, (True, True, True))  # independent distances
    for i in range(30):
        all_d = np.sort([d for (a, _, _), d in ref.items() if a == i])
        expected = all_d[all_d <= all_d[min(12, len(all_d)) - 1] + CAP_TOLERANCE]
        got = d_kept.norm(dim=1)[kept[1] == i]
        assert np.allclose(np.sort(got.numpy()), expected)
    few = _graph(np.array([[0.1, 0.1, 0.1], [0.2, 0.2, 0.2]]), np.eye(3) * 20.0, 4.0, max_neighbors=5)[0]
    assert few.shape[1] == 2  # fewer candidates than k: keep all


def test_max_neighbors_keeps_a_degenerate_shell_whole():
    # simple cubic, a = 3: 6 neighbours at 3 A, 12 at 4.24 A; a cap of 8 cuts the second shell
    ei, _, vec = _graph(np.zeros((1, 3)), np.eye(3) * 3.0, 4.5, max_neighbors=8)
    assert sorted(np.round(vec.norm(dim=1).numpy(), 6).tolist()) == [3.0] * 6 + [round(18**0.5, 6)] * 12


def test_cap_neighbors_rule_and_order_independence():
    distance = torch.tensor([1.0, 2.0, 2.005, 2.02, 0.5, 3.0, 3.0])
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    assert cap_neighbors(distance, target, 2).tolist() == [True, True, True, False, True, True, True]
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cap_neighbors(distance[perm], target[perm], 2), cap_neighbors(distance, target, 2)[perm])
    with pytest.raises(ValueError, match="max_neighbors"):
        cap_neighbors(distance, target, 0)


def test_edge_vectors_gradients():
    frac = torch.tensor(np.random.default_rng(7).uniform(0, 1, (5, 3)), requires_grad=True)
    cell = torch.tensor(TINY[None] * 1.5, requires_grad=True)
    batch = torch.zeros(5, dtype=torch.long)
    edge_index, offsets = radius_graph_pbc(frac, cell, batch, 4.0)
    assert not offsets.requires_grad
    torch.autograd.gradcheck(lambda f, c: edge_vectors(f, c, batch, edge_index, offsets), (frac, cell))


def test_empty_and_float32():
    edge_index, offsets = radius_graph_pbc(
        torch.rand(4, 3), torch.eye(3)[None] * 50, torch.zeros(4, dtype=torch.long), 0.01
    )
    assert edge_index.shape == (2, 0) and offsets.shape == (0, 3) and offsets.dtype == torch.float32
    edge_index, _ = radius_graph_pbc(
        torch.rand(4, 3), torch.eye(3)[None] * 50, torch.zeros(4, dtype=torch.long), 0.01, 3
    )
    assert edge_index.shape == (2, 0)


@pytest.mark.parametrize("cell", [[[5.0, 0, 0], [0, 5, 0], [0, 0, 1e-3]], [[5.0, 0, 0], [10, 0, 0], [0, 0, 5]]])
def test_degenerate_cell_raises(cell):
    lattice = torch.stack([torch.eye(3) * 10, torch.tensor(cell)])
    with pytest.raises(ValueError, match="graph 1: .*degenerate"):
        radius_graph_pbc(torch.rand(4, 3), lattice, torch.tensor([0, 0, 1, 1]), 6.0)


def test_non_finite_positions_or_lattice_are_named():
    frac = torch.rand(6, 3, dtype=torch.float64)
    lattice = torch.eye(3, dtype=torch.float64).expand(3, 3, 3) * 5.0
    batch = torch.tensor([0, 0, 1, 1, 2, 2])
    frac[3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite positions or lattice in structure\(s\) \[1\] of the batch"):
        radius_graph_pbc(frac, lattice, batch, 3.0)
    frac[3, 0] = 0.5
    lattice = lattice.clone()
    lattice[2, 1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"structure\(s\) \[2\]"):
        radius_graph_pbc(frac, lattice, batch, 3.0)
