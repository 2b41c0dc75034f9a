"""success@k by hand; anomaly flags against fairchem's DetectTrajAnomaly (the AdsorbML code)."""

import numpy as np
import pytest
import torch
from fairchem.data.oc.utils.flag_anomaly import DetectTrajAnomaly

from sfm.eval.oc20 import success_at_k
from sfm.eval.placement import anomalies, connectivity, slab_max_displacement
from sfm.relax.bench import make_slabs


def test_success_at_k_by_hand():
    energies = np.array([[0.35, 0.05, 0.2],    # best of 1: 0.35 (0.25 above), of 2: 0.05
                         [np.nan, -0.3, 0.0],  # anomalous first sample; below the reference
                         [0.5, 0.6, 0.7]])     # never within 0.1 eV
    ref = np.array([0.1, 0.0, 0.0])
    assert success_at_k(energies, ref, 1) == pytest.approx(0.0)
    assert success_at_k(energies, ref, 2) == pytest.approx(2 / 3)
    assert success_at_k(energies, ref, 3, threshold=0.55) == pytest.approx(1.0)


def cases():
    """(name, initial Atoms, final Atoms): untouched, desorbed, dissociated, slab moved."""
    slabs = make_slabs(10, seed=0)
    co = next(a for a in slabs if sorted(a.numbers[a.get_tags() == 2]) == [6, 8])
    out = [("same", co, co.copy())]
    up = co.copy()
    up.positions[up.get_tags() == 2] += [0.0, 0.0, 4.0]
    out.append(("desorbed", co, up))
    split = co.copy()
    split.positions[np.flatnonzero(split.get_tags() == 2)[-1]] += [2.5, 0.0, 0.5]
    out.append(("dissociated", co, split))
    moved = co.copy()
    moved.positions[np.flatnonzero(moved.get_tags() == 1)[0]] += [0.0, 1.2, 0.0]
    out.append(("slab_moved", co, moved))
    for a in slabs[:4]:  # perturbed slabs with single-atom or diatomic adsorbates
        out.append(("perturbed", a, a.copy()))
    return out


@pytest.mark.parametrize("name,init,final", cases())
def test_anomalies_match_fairchem(name, init, final):
    tags = init.get_tags()
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    flags = anomalies(t(init.numbers), t(init.positions), t(final.positions), t(init.cell), t(tags))
    ref = DetectTrajAnomaly(init, final, tags)
    assert flags["desorbed"] == ref.is_adsorbate_desorbed()
    assert flags["dissociated"] == ref.is_adsorbate_dissociated()
    assert flags["slab_moved"] == (name == "slab_moved")
    assert flags["any"] == (name != "same" and name != "perturbed")
    d = slab_max_displacement(t(init.positions), t(final.positions), t(init.cell), t(tags))
    assert d == pytest.approx(1.2 if name == "slab_moved" else 0.0, abs=1e-9)


def test_connectivity_matches_ase_neighbor_list():
    from ase.neighborlist import NeighborList, get_connectivity_matrix, natural_cutoffs

    atoms = make_slabs(1, seed=5)[0]
    nl = NeighborList(natural_cutoffs(atoms, mult=1.2), self_interaction=False, bothways=True)
    nl.update(atoms)
    ref = get_connectivity_matrix(nl.nl).toarray() > 0
    got = connectivity(torch.tensor(atoms.numbers), torch.tensor(atoms.positions),
                       torch.tensor(np.asarray(atoms.cell)), mult=1.2)
    assert np.array_equal(got.numpy(), ref)
