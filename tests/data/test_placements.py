"""Heuristic and random adsorbate placements (sfm.data.placements): site counts against pymatgen's
site finder, geometry (above the surface, no overlap, adsorbate rigid) checked with ASE, determinism."""

import numpy as np
import pytest
from ase.build import fcc111
from ase.data import covalent_radii
from pymatgen.analysis.adsorption import AdsorbateSiteFinder
from pymatgen.io.ase import AseAtomsAdaptor

from sfm.data import demo
from sfm.data.placements import (
    INTERSTITIAL_GAP,
    heuristic_placements,
    oc20_adsorbate,
    placements,
    random_placements,
)


def pt111():
    slab = fcc111("Pt", size=(3, 3, 4), a=3.92, vacuum=10.0)
    slab.set_tags(demo.surface_tags(slab.positions[:, 2]))
    slab.pbc = True
    return slab


def alloy_slab(seed=3):
    rng = np.random.default_rng(seed)
    slab, _ = demo.build_slab(rng, ("Cu", "Ni"))
    slab.set_constraint()
    return slab


def check_geometry(slab, ads, placement):
    atoms = placement.atoms
    n = len(slab)
    tags = atoms.get_tags()
    assert len(atoms) == n + len(ads.atoms)
    assert tags[:n].tolist() == slab.get_tags().tolist() and (tags[n:] == 2).all()
    assert atoms.numbers[n:].tolist() == ads.atoms.numbers.tolist()
    assert atoms.pbc.all()
    assert atoms.constraints[0].get_indices().tolist() == np.flatnonzero(tags == 0).tolist()
    # slab atoms are where they were (up to the wrap)
    shift = atoms.positions[:n] - slab.positions
    frac = np.linalg.solve(slab.cell.array.T, shift.T).T
    np.testing.assert_allclose(frac - np.round(frac), 0.0, atol=1e-9)
    # the adsorbate is rigid: its internal distances are the gas-phase ones (minimum image)
    inner = atoms[n:].get_all_distances(mic=True)
    np.testing.assert_allclose(inner, ads.atoms.get_all_distances(), atol=1e-6)
    # above the surface, and nowhere closer to a slab atom than the covalent contact plus the gap
    surface_z = slab.positions[slab.get_tags() == 1, 2].mean()
    assert atoms.positions[n:, 2].min() > surface_z
    dist = np.array([atoms.get_distances(i, list(range(n)), mic=True) for i in range(n, len(atoms))])
    contact = covalent_radii[atoms.numbers[n:]][:, None] + covalent_radii[slab.numbers][None, :]
    assert (dist >= contact + INTERSTITIAL_GAP - 1e-3).all()


def test_every_heuristic_site_of_pymatgen():
    slab = pt111()
    struct = AseAtomsAdaptor.get_structure(slab).copy(
        site_properties={"surface_properties": ["surface" if t == 1 else "subsurface" for t in slab.get_tags()]}
    )
    expected = AdsorbateSiteFinder(struct).find_adsorption_sites(distance=0)["all"]
    ads = oc20_adsorbate("*CO")
    got = heuristic_placements(slab, ads, seed=0)
    # the demo tags the top two layers as surface: on-top, bridge and hollow sites of both, symmetry-reduced
    assert len(got) == len(expected) == 8
    assert sorted(map(tuple, np.round([p.site for p in got], 6))) == sorted(map(tuple, np.round(expected, 6)))
    assert [p.config_id for p in got] == [f"heur{i}" for i in range(8)]
    for p in got:
        check_geometry(slab, ads, p)


@pytest.mark.parametrize("smiles", ["*OCH2CH3", "*NH2NH2", "*CH2*O"])
def test_geometry_on_an_alloy(smiles):
    slab, ads = alloy_slab(), oc20_adsorbate(smiles)
    out = placements(slab, ads, num_random=5, seed=1, max_sites=6)
    assert [p.source for p in out] == ["heuristic"] * 6 + ["random"] * 5
    assert [p.config_id for p in out[6:]] == [f"rand{i}" for i in range(5)]
    for p in out:
        check_geometry(slab, ads, p)


def test_counts_and_subsets():
    slab, ads = alloy_slab(), oc20_adsorbate("*OH")
    every = heuristic_placements(slab, ads, seed=2)
    assert len(every) > 20  # an alloy slab has little symmetry: many distinct sites
    first = heuristic_placements(slab, ads, seed=2, max_sites=5)
    assert [p.site.tolist() for p in first] == [p.site.tolist() for p in every[:5]]
    assert len(random_placements(slab, ads, 7, seed=2)) == 7
    assert random_placements(slab, ads, 0) == []


def test_deterministic_and_global_state_kept():
    slab, ads = alloy_slab(), oc20_adsorbate("*COH")
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = placements(slab, ads, num_random=3, seed=5, max_sites=4)
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    b = placements(slab, ads, num_random=3, seed=5, max_sites=4)
    c = placements(slab, ads, num_random=3, seed=6, max_sites=4)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.atoms.positions, q.atoms.positions)
    assert any(not np.allclose(p.atoms.positions, q.atoms.positions) for p, q in zip(a, c))


def test_own_adsorbate_from_atoms_and_binding_indices():
    co = oc20_adsorbate("*CO")
    mine = demo.Adsorbate(co.atoms.copy(), "", (0,))
    out = random_placements(pt111(), mine, 2, seed=0)
    assert len(out) == 2 and all((p.atoms.get_tags()[-2:] == 2).all() for p in out)


def test_bad_input():
    slab, ads = pt111(), oc20_adsorbate("*CO")
    with pytest.raises(KeyError, match="not in the OC20 list"):
        oc20_adsorbate("*XYZ")
    tagged = slab.copy()
    tagged.set_tags([2] * len(slab))
    with pytest.raises(ValueError, match="tags must be 0"):
        heuristic_placements(tagged, ads)
    flat = slab.copy()
    flat.set_tags(0)
    with pytest.raises(ValueError, match="no surface atom"):
        random_placements(flat, ads, 1)
    with pytest.raises(ValueError, match="binding indices"):
        random_placements(slab, demo.Adsorbate(ads.atoms, "*CO", (5,)), 1)
    with pytest.raises(ValueError, match="max_sites"):
        heuristic_placements(slab, ads, max_sites=0)
    with pytest.raises(ValueError, match="num"):
        random_placements(slab, ads, -1)
