"""OC20's slab cut from a bulk (fairchem-data-oc, imported without fairchem-core)."""

import numpy as np
from ase.build import bulk

from sfm.data.fairchem_oc import slabs_from_bulk


def test_fcc111_cut_is_tiled_tagged_and_held():
    slabs = slabs_from_bulk(bulk("Cu", "fcc", a=3.6), (1, 1, 1))
    assert len(slabs) == 1  # fcc(111) has one termination
    slab = slabs[0]
    assert np.linalg.norm(slab.cell[0]) >= 8.0 and np.linalg.norm(slab.cell[1]) >= 8.0
    assert slab.pbc.all() and set(slab.get_tags().tolist()) == {0, 1}
    z = slab.positions[:, 2]
    top = np.isclose(z, z.max(), atol=0.1)
    np.testing.assert_array_equal(slab.get_tags() == 1, top)  # the exposed layer is the surface
    np.testing.assert_array_equal(np.sort(slab.constraints[0].get_indices()), np.flatnonzero(~top))
    spacing = np.diff(np.unique(np.round(z, 2)))
    np.testing.assert_allclose(spacing, 3.6 / np.sqrt(3), atol=0.02)  # (111) interlayer distance a / sqrt(3)


def test_a_second_cut_in_the_same_process():
    """The stand-in for fairchem-core is registered once; later cuts reuse it."""
    first = slabs_from_bulk(bulk("Pt", "fcc", a=3.92), (1, 0, 0))
    second = slabs_from_bulk(bulk("Pt", "fcc", a=3.92), (1, 0, 0))
    assert len(first) == len(second) >= 1
    np.testing.assert_allclose(first[0].positions, second[0].positions)
