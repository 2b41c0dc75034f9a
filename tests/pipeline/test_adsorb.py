"""Pieces of the adsorption search: inputs and their errors, placements, references, the table."""

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from sfm.data.anomaly import detect
from sfm.pipeline.adsorb import (
    AdsorbConfig,
    baseline_placements,
    check_config,
    gas_references,
    load_adsorbate,
    load_slab,
    prepare_slab,
    table,
    vacuum_gap,
)

EMT = "ase.calculators.emt:EMT"


def cu111(vacuum=8.0):
    return fcc111("Cu", size=(3, 3, 4), vacuum=vacuum, periodic=True)


def cfg(tmp_path, **kw):
    return AdsorbConfig(out=str(tmp_path / "out"), relaxer=EMT, heuristic=True, **kw)


def test_slab_tags_rule_and_file_tags(tmp_path):
    plain = cu111()
    plain.set_tags(0)  # a CIF has no tags: the rule tags the upper half of the heights
    slab = prepare_slab(plain, "cu", 6.0)
    z = slab.positions[:, 2]
    assert (slab.get_tags() == (z > np.median(z)).astype(int)).all()
    fixed = slab.constraints[0].get_indices()
    np.testing.assert_array_equal(np.sort(fixed), np.flatnonzero(slab.get_tags() == 0))
    tagged = cu111()
    tagged.set_tags((tagged.get_tags() == 1).astype(int))  # only the top layer is the surface
    tagged.set_constraint(FixAtoms(indices=[0, 1]))
    slab = prepare_slab(tagged, "cu", 6.0)
    assert (slab.get_tags() == tagged.get_tags()).all()
    assert sorted(slab.constraints[0].get_indices()) == [0, 1]


def test_slab_straddling_the_cell_boundary_is_made_whole():
    slab = cu111()
    shifted = slab.copy()
    shifted.positions[:, 2] += slab.cell[2, 2] - slab.positions[:, 2].mean()  # half of it wraps to the bottom
    shifted.wrap()
    out = prepare_slab(shifted, "cu", 6.0)
    np.testing.assert_allclose(np.ptp(out.positions[:, 2]), np.ptp(slab.positions[:, 2]), atol=1e-8)
    assert vacuum_gap(out) == pytest.approx(vacuum_gap(slab))


@pytest.mark.parametrize(
    "name,atoms,match",
    [
        ("bulk.cif", bulk("Cu", "fcc", a=3.6, cubic=True), "vacuum along c"),
        ("nocell.xyz", Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]]), "no \\(full 3-D\\) cell"),
    ],
)
def test_bad_slab_files_are_named(tmp_path, name, atoms, match):
    path = tmp_path / name
    atoms.write(path)
    with pytest.raises(ValueError, match=match) as err:
        load_slab(AdsorbConfig(out=str(tmp_path / "o"), relaxer=EMT, slab=str(path)))
    assert name in str(err.value)


def test_slab_with_an_adsorbate_is_refused(tmp_path):
    slab = cu111()
    add_adsorbate(slab, "O", 2.0, "fcc")
    slab.set_tags([0] * 18 + [1] * 18 + [2])
    with pytest.raises(ValueError, match="adsorbate atoms"):
        prepare_slab(slab, "x", 6.0)


def test_slab_from_an_ase_db_row(tmp_path):
    from ase.db import connect

    db = connect(tmp_path / "slabs.db")
    db.write(bulk("Cu"))
    db.write(cu111())
    slab, _ = load_slab(AdsorbConfig(out="o", relaxer=EMT, slab=f"{tmp_path / 'slabs.db'}@id=2"))
    assert len(slab) == 36 and (slab.get_tags() == 1).sum() == 18


def test_adsorbates_by_name_and_file(tmp_path):
    ads = load_adsorbate(AdsorbConfig(out="o", relaxer=EMT, adsorbate="*OH"))
    assert ads.atoms.get_chemical_formula() == "HO" and ads.binding == (0,)
    with pytest.raises(ValueError, match="neither an OC20 adsorbate nor a file.*\\*OH"):
        load_adsorbate(AdsorbConfig(out="o", relaxer=EMT, adsorbate="OH"))
    path = tmp_path / "ads.xyz"
    molecule("CO").write(path)
    with pytest.raises(ValueError, match="give binding"):
        load_adsorbate(AdsorbConfig(out="o", relaxer=EMT, adsorbate=str(path)))
    ads = load_adsorbate(AdsorbConfig(out="o", relaxer=EMT, adsorbate=str(path), binding=(1,)))
    assert ads.binding == (1,) and len(ads.atoms) == 2
    Atoms("XO", positions=[[0, 0, 0], [0, 0, 1.2]]).write(tmp_path / "x.xyz")
    with pytest.raises(ValueError, match="unknown element"):
        load_adsorbate(AdsorbConfig(out="o", relaxer=EMT, adsorbate=str(tmp_path / "x.xyz"), binding=(0,)))


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="slab .* or as bulk"):
        check_config(AdsorbConfig(out="o", relaxer=EMT, heuristic=True))
    with pytest.raises(ValueError, match="diffusion checkpoint"):
        check_config(AdsorbConfig(out="o", relaxer=EMT, slab=__file__, num_generated=2))
    with pytest.raises(ValueError, match="no placements"):
        check_config(AdsorbConfig(out="o", relaxer=EMT, slab=__file__))
    with pytest.raises(FileNotFoundError, match="relaxer"):
        check_config(AdsorbConfig(out="o", relaxer="missing.pt", slab=__file__, heuristic=True))


def test_heuristic_sites_are_the_fcc111_sites_and_reproducible():
    top = cu111()
    top.set_tags((top.get_tags() == 1).astype(int))  # the top layer is the surface, as fairchem tags it
    slab = prepare_slab(top, "cu", 6.0)
    ads = load_adsorbate(AdsorbConfig(out="o", relaxer=EMT, adsorbate="*O"))
    placed = baseline_placements(slab, ads, "heuristic", None, seed=0)
    assert len(placed) == 4  # ontop, bridge, fcc and hcp hollow of fcc(111)
    for a in placed:
        assert (a.get_tags()[:36] == slab.get_tags()).all() and (a.get_tags()[36:] == 2).all()
        np.testing.assert_array_equal(a.positions[:36], slab.positions)
        assert (a.positions[36:, 2] > slab.positions[:, 2].max()).all()
    state = np.random.get_state()[1].copy()
    again = baseline_placements(slab, ads, "random", 3, seed=5)
    assert len(again) == 3
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # numpy's global generator left alone
    for a, b in zip(again, baseline_placements(slab, ads, "random", 3, seed=5)):
        np.testing.assert_array_equal(a.positions, b.positions)


def test_gas_references_follow_oc20_scheme():
    e = {"H2": 2.0, "H2O": 5.0, "CO": 7.0, "N2": 1.0}
    assert gas_references(e) == {"H": 1.0, "O": 3.0, "C": 4.0, "N": 0.5}


def hand_made_relaxed():
    """(slab, adsorbate, placements, relaxed): *OH on Cu(111) relaxed four ways by hand."""
    slab = prepare_slab(cu111(), "cu", 6.0)
    ads = load_adsorbate(AdsorbConfig(out="o", relaxer=EMT, adsorbate="*OH"))
    init = baseline_placements(slab, ads, "heuristic", 4, seed=0)
    moves = {0: [], 1: "desorbed", 2: "dissociated", 3: "surface_changed"}
    relaxed = []
    for i, a in enumerate(init):
        a.info = {"source": "heuristic", "index": i}
        b = a.copy()
        if moves[i] == "desorbed":
            b.positions[36:] += [0, 0, 6.0]
        elif moves[i] == "dissociated":
            b.positions[37] = b.positions[36] + [2.0, 0, 0.5]  # O-H cutoff 0.66 + 0.31 + 0.6 A
        elif moves[i] == "surface_changed":
            b.positions[np.flatnonzero(b.get_tags() == 1)[0]] -= [0, 0, 6.0]
        b.info.update(converged=True, steps=3, fmax=0.01)
        b.calc = SinglePointCalculator(b, energy=float(-i), forces=np.zeros((len(b), 3)))
        relaxed.append(b)
    return slab, ads.atoms, init, relaxed


def test_table_labels_and_ranks_hand_made_anomalies():
    slab, ads, init, relaxed = hand_made_relaxed()
    refs = {"slab_energy": 10.0, "elements": {"O": 1.0, "H": 0.5}}
    rows = table(init, relaxed, slab, ads, refs, None)
    assert [r["anomalies"] for r in rows] == ["", "desorbed", "dissociated", "surface_changed"]
    assert [r["rank"] for r in rows] == [0, None, None, None]
    assert rows[0]["adsorption_energy"] == pytest.approx(0.0 - 10.0 - 1.5)
    rows = table(init, relaxed, slab, ads, None, None)  # referenced: the energy is the adsorption energy
    assert [r["adsorption_energy"] for r in rows] == [r["energy"] for r in rows] == [0.0, -1.0, -2.0, -3.0]


def test_dissociation_is_judged_against_the_adsorbate_as_given():
    """A placement generated already broken stays dissociated even if relaxation keeps it so."""
    slab, ads, _, relaxed = hand_made_relaxed()
    broken = relaxed[2].copy()
    broken.info = dict(relaxed[2].info, index=0)
    broken.calc = relaxed[2].calc
    start = broken.copy()
    start.info = {"source": "generated", "index": 0}
    rows = table([start], [broken], slab, ads, None, None)
    assert rows[0]["anomalies"] == "dissociated"
    assert not detect(start.numbers, start.get_tags(), start.positions, broken.positions, start.cell.array).dissociated


def test_relaxed_frames_keep_energy_forces_and_info_through_extxyz(tmp_path):
    from sfm.pipeline.adsorb import write_extxyz

    _, _, _, relaxed = hand_made_relaxed()
    write_extxyz(tmp_path / "r.extxyz", relaxed)
    back = ase.io.read(tmp_path / "r.extxyz", ":")
    for a, b in zip(relaxed, back):
        assert b.get_potential_energy() == a.get_potential_energy()
        assert b.info["converged"] is True and b.info["steps"] == 3
        assert (b.get_tags() == a.get_tags()).all()
        np.testing.assert_array_equal(np.sort(b.constraints[0].get_indices()), np.sort(a.constraints[0].get_indices()))
