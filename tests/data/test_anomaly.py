"""AdsorbML anomaly flags: hand-made placements of each kind, and agreement with fairchem's
DetectTrajAnomaly (the AdsorbML code, an independent implementation on ASE neighbour lists)."""

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111, molecule
from ase.geometry import get_distances
from fairchem.data.oc.utils.flag_anomaly import DetectTrajAnomaly
from hypothesis import given, settings
from hypothesis import strategies as st

from sfm.data.anomaly import KINDS, Anomalies, bonds, detect, detect_atoms
from sfm.relax.bench import make_slabs


def oh_on_pt() -> "Atoms":  # noqa: F821
    """Pt(111) 3x3x4 (oblique cell) with *OH on an fcc site; OC20 tags: layers 3-4 from the top
    subsurface (0), layers 1-2 surface (1), OH adsorbate (2)."""
    slab = fcc111("Pt", size=(3, 3, 4), vacuum=8.0, periodic=True)
    layer = slab.get_tags()  # 1 = top layer
    oh = molecule("OH")
    oh.positions[1] = oh.positions[0] + [0, 0, 0.97]  # H straight up from O
    add_adsorbate(slab, oh, 2.0, "fcc", mol_index=0)
    slab.set_tags(np.concatenate([np.where(layer <= 2, 1, 0), [2, 2]]))
    return slab


def fairchem_flags(init, final, slab=None) -> dict:
    ref = DetectTrajAnomaly(init, final, init.get_tags(), final_slab_atoms=slab)
    return {
        "desorbed": ref.is_adsorbate_desorbed(),
        "dissociated": ref.is_adsorbate_dissociated(),
        "surface_changed": ref.has_surface_changed(),
        "intercalated": ref.is_adsorbate_intercalated(),
    }


def hand_made():
    """(expected raised kinds, initial, final): a normal placement and one of each anomaly."""
    init = oh_on_pt()
    tags = init.get_tags()
    ads = np.flatnonzero(tags == 2)
    rng = np.random.default_rng(0)
    out = []

    final = init.copy()
    final.positions += rng.normal(scale=0.05, size=final.positions.shape) * (tags > 0)[:, None]
    out.append(([], init, final))

    wrapped = init.copy()  # the same structure, atoms across the periodic boundary: nothing changes
    wrapped.positions += init.cell[0] * 0.9 + init.cell[1] * 0.7
    wrapped.wrap()
    out.append(([], init, wrapped))

    final = init.copy()
    final.positions[ads] += [0.0, 0.0, 5.0]
    out.append((["desorbed"], init, final))

    final = init.copy()  # H pulled 1.6 A sideways: the O-H bond (cutoff 0.97 + 0.6 A) breaks
    final.positions[ads[1]] = final.positions[ads[0]] + [1.6, 0.0, 0.3]
    out.append((["dissociated"], init, final))

    # the top-layer atom farthest from the O lifted 5 A: beyond 1.5x the cutoff from its neighbours
    top = np.flatnonzero(init.get_tags() == 1)[-9:]
    far = top[np.argmax(get_distances(init.positions[top], init.positions[ads[0]], init.cell, pbc=True)[1][:, 0])]
    final = init.copy()
    final.positions[far] += [0.0, 0.0, 5.0]
    out.append((["surface_changed"], init, final))

    # OH moved rigidly below the surface layers, O above a subsurface (tag 0) atom
    sub = np.flatnonzero(tags == 0)
    third = sub[np.argmax(init.positions[sub, 2])]
    second_z = init.positions[tags == 1, 2].min()
    spot = init.positions[third] + [0.0, 0.0, 0.5 * (second_z - init.positions[third, 2])]
    final = init.copy()
    final.positions[ads] += spot - init.positions[ads[0]]
    out.append((["intercalated"], init, final))
    return out


@pytest.mark.parametrize(
    "expected,init,final",
    hand_made(),
    ids=["normal", "wrapped", "desorbed", "dissociated", "surface_changed", "intercalated"],
)
def test_hand_made_placements(expected, init, final):
    flags = detect_atoms(init, final)
    assert flags.labels() == expected
    assert flags.any == bool(expected)
    assert flags.as_dict() == fairchem_flags(init, final)


def test_arrays_and_tensors_give_the_same_flags():
    for expected, init, final in hand_made():
        args = (init.numbers, init.get_tags(), init.positions, final.positions, init.cell.array)
        assert detect(*args).labels() == expected
        assert detect(*(torch.as_tensor(np.asarray(a)) for a in args)).labels() == expected


def test_relaxed_clean_slab_is_the_surface_reference():
    init = oh_on_pt()
    slab = init[init.get_tags() != 2]
    moved = slab.copy()
    moved.positions[0] += [0.0, 0.0, -6.0]  # the "relaxed" clean slab lost a bottom atom's bonds
    assert detect_atoms(init, init.copy(), slab=slab).labels() == []
    assert detect_atoms(init, init.copy(), slab=moved).labels() == ["surface_changed"]
    assert fairchem_flags(init, init.copy(), moved)["surface_changed"]


def test_clean_slab_can_only_change_its_surface():
    slab = oh_on_pt()
    slab = slab[slab.get_tags() != 2]
    final = slab.copy()
    final.positions[-1] += [0.0, 0.0, 5.0]
    assert detect_atoms(slab, slab.copy()) == Anomalies()
    assert detect_atoms(slab, final).labels() == ["surface_changed"]


def test_bond_rule_matches_ase_neighbor_list():
    from ase.neighborlist import NeighborList, get_connectivity_matrix, natural_cutoffs

    atoms = make_slabs(1, seed=3)[0]
    for mult in (1.0, 1.5):
        nl = NeighborList(natural_cutoffs(atoms, mult=mult), self_interaction=False, bothways=True)
        nl.update(atoms)
        ref = get_connectivity_matrix(nl.nl).toarray().astype(bool)
        np.fill_diagonal(ref, False)  # bonds to an atom's own periodic image (not counted here)
        np.testing.assert_array_equal(bonds(atoms.numbers, atoms.positions, atoms.cell.array, mult), ref)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([0.05, 0.3, 0.8, 1.5]))
def test_agrees_with_fairchem_on_random_relaxations(seed, scale):
    """Random 'relaxations' (free atoms displaced by N(0, scale^2)) of demo-like adslabs on
    oblique cells: every flag as fairchem's, whichever way each one goes."""
    init = make_slabs(1, seed=seed)[0]
    final = init.copy()
    free = init.get_tags() > 0
    final.positions += np.random.default_rng(seed).normal(scale=scale, size=final.positions.shape) * free[:, None]
    assert detect_atoms(init, final).as_dict() == fairchem_flags(init, final)


def test_agrees_with_fairchem_on_tilted_cells(make_structure):
    """Random OC20-like structures (tilted c, random tags, H C N O Cu Pt) and a displaced copy."""
    from ase import Atoms

    raised = set()
    for seed in range(12):
        d = make_structure(seed, natoms=24)
        init = Atoms(
            numbers=d.atomic_numbers.long().numpy(),
            positions=d.pos.double().numpy(),
            cell=d.cell[0].double().numpy(),
            pbc=True,
            tags=d.tags.numpy(),
        )
        final = init.copy()
        final.positions += np.random.default_rng(seed).normal(scale=0.7, size=final.positions.shape)
        flags = detect_atoms(init, final)
        assert flags.as_dict() == fairchem_flags(init, final)
        raised |= set(flags.labels())
    # random atoms rarely leave an adsorbate with no slab neighbour: desorption is in hand_made()
    assert raised == set(KINDS) - {"desorbed"}


def test_bad_input_is_named():
    init = oh_on_pt()
    with pytest.raises(ValueError, match="tags must be 0"):
        detect(init.numbers, np.full(len(init), 3), init.positions, init.positions, init.cell.array)
    with pytest.raises(ValueError, match="final positions has shape"):
        detect(init.numbers, init.get_tags(), init.positions, init.positions[:-1], init.cell.array)
    strained = init.copy()
    strained.set_cell(init.cell.array * 1.01, scale_atoms=True)
    with pytest.raises(ValueError, match="cell changed"):
        detect_atoms(init, strained)
    with pytest.raises(ValueError, match="clean slab's atoms"):
        detect_atoms(init, init.copy(), slab=init[:5])
