"""Generation metrics against ASE (distances, cell parameters), pymatgen and hand-made cases."""

import numpy as np
import pytest
import torch
from ase import Atoms
from hypothesis import given, settings
from hypothesis import strategies as st

from sfm.eval.generation import (
    composition_kept,
    is_valid,
    lattice_parameters,
    lattice_stats,
    match_at_k,
    match_rms,
    min_distance,
    structure_matcher,
    to_structure,
    uniqueness,
)
from sfm.relax.bench import make_slabs


@settings(max_examples=25, deadline=None)
@given(skew=st.tuples(*[st.floats(-0.45, 0.45)] * 3), seed=st.integers(0, 10_000))
def test_min_distance_and_cell_parameters_match_ase(skew, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(2.5, 8.0, size=3)
    cell = np.diag(lengths) + np.array([[0, 0, 0], [skew[0], 0, 0], [skew[1], skew[2], 0]]) * lengths[:, None]
    atoms = Atoms("Cu6", positions=rng.uniform(-1, 2, size=(6, 3)) @ cell, cell=cell, pbc=True)
    d = atoms.get_all_distances(mic=True)[np.triu_indices(6, 1)]
    assert min_distance(torch.tensor(atoms.positions), torch.tensor(cell)) == pytest.approx(d.min(), rel=1e-9)
    np.testing.assert_allclose(lattice_parameters(torch.tensor(cell))[0].numpy(), atoms.cell.cellpar(), rtol=1e-9)


def test_validity_uses_minimum_image_and_volume():
    cell = torch.eye(3) * 4.0
    across = torch.tensor([[0.1, 0, 0], [3.7, 0, 0]])  # 0.4 A apart through the boundary
    assert min_distance(across, cell) == pytest.approx(0.4)
    assert not is_valid(across, cell)
    assert is_valid(torch.tensor([[0.1, 0, 0], [3.5, 0, 0]]), cell)  # 0.6 A
    flat = torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 0.005]])  # 0.08 A^3
    assert not is_valid(torch.tensor([[0.0, 0, 0], [2.0, 2, 0]]), flat)
    assert not is_valid(torch.tensor([[float("nan"), 0, 0]]), cell)
    assert is_valid(torch.tensor([[0.0, 0, 0]]), cell)  # one atom: no pair to collide


def test_composition_kept():
    assert composition_kept(torch.tensor([8, 29, 29]), torch.tensor([29, 8, 29]))
    assert not composition_kept(torch.tensor([8, 29, 29]), torch.tensor([8, 8, 29]))
    assert not composition_kept(torch.tensor([29, 29]), torch.tensor([29, 29, 29]))


@pytest.fixture(scope="module")
def slab():
    a = make_slabs(1, seed=3)[0]
    return torch.tensor(a.numbers), torch.tensor(a.positions), torch.tensor(np.asarray(a.cell))


def test_match_rms_is_pymatgen(slab):
    numbers, pos, cell = slab
    matcher = structure_matcher()
    ref = to_structure(numbers, pos, cell)
    moved = pos + torch.tensor(np.random.default_rng(0).normal(scale=0.05, size=pos.shape))
    shifted = pos + torch.tensor([1.3, -0.4, 0.0])  # a rigid translation is the same structure
    assert match_rms(to_structure(numbers, shifted, cell), ref, matcher) == pytest.approx(0.0, abs=1e-6)
    rms = match_rms(to_structure(numbers, moved, cell), ref, matcher)
    assert rms == pytest.approx(matcher.get_rms_dist(to_structure(numbers, moved, cell), ref)[0])
    assert 0 < rms < 0.1
    far = pos.clone()
    far[-1, 2] += 3.0  # the adsorbate 3 A away: no match at a strict site tolerance
    assert np.isnan(match_rms(to_structure(numbers, far, cell), ref, structure_matcher(stol=0.1)))
    assert np.isnan(match_rms(None, ref, matcher))


def test_match_at_k_by_hand():
    rms = np.array([[np.nan, 0.2, 0.1], [0.3, np.nan, np.nan], [np.nan, np.nan, np.nan], [np.nan, np.nan, 0.05]])
    assert match_at_k(rms, 1) == pytest.approx({"match_rate": 0.25, "rmse": 0.3})
    assert match_at_k(rms, 2) == pytest.approx({"match_rate": 0.5, "rmse": (0.2 + 0.3) / 2})
    assert match_at_k(rms, 3) == pytest.approx({"match_rate": 0.75, "rmse": (0.1 + 0.3 + 0.05) / 3})


def test_uniqueness(slab):
    numbers, pos, cell = slab
    far = pos.clone()
    far[-1, 2] += 3.0
    structs = [to_structure(numbers, p, cell) for p in (pos, pos + torch.tensor([0.7, 0.2, 0.0]), far)]
    assert uniqueness(structs, structure_matcher(stol=0.1)) == pytest.approx(2 / 3)


def test_lattice_stats_wasserstein():
    ref = torch.stack([torch.diag(torch.tensor([3.0 + i, 4.0, 20.0])) for i in range(4)])
    shifted = ref.clone()
    shifted[:, 0, 0] += 0.5
    stats = lattice_stats(shifted, ref)
    assert stats["a"]["wasserstein"] == pytest.approx(0.5)
    assert stats["a"]["mean"] - stats["a"]["ref_mean"] == pytest.approx(0.5)
    assert stats["b"]["wasserstein"] == 0.0 and stats["gamma"]["mean"] == pytest.approx(90.0)
