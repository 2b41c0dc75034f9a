"""Energy/force views of a split (sfm/data/views.py), shared by S2EF training and evaluation."""

import pytest
import torch

from sfm.data.views import IS2REAsS2EF, labelled


def test_views_of_an_is2re_entry(make_structure):
    d = make_structure(0, natoms=6)
    relaxed, initial = labelled(d, "relaxed"), labelled(d, "initial")
    assert torch.equal(relaxed.pos, d.pos_relaxed) and relaxed.y == pytest.approx(d.y_relaxed)
    assert torch.equal(relaxed.force, torch.zeros(6, 3)) and torch.equal(relaxed.fixed, d.tags == 0)
    assert torch.equal(initial.pos, d.pos) and initial.y == pytest.approx(d.y_init) and "force" not in initial
    assert relaxed.sid == initial.sid == d.sid
    with pytest.raises(ValueError, match=r"entry 4: the 'frames' view needs \['y'\].*IS2RE"):
        labelled(d, "frames", "entry 4")


def test_frames_keep_stored_fixed_and_force(make_structure):
    d = make_structure(1, natoms=5, s2ef=True)
    d.fixed[:] = 1.0
    frame = labelled(d, "frames")
    assert torch.equal(frame.force, d.force) and frame.fixed.all() and frame.fixed.dtype == torch.bool
    with pytest.raises(ValueError, match="S2EF"):
        labelled(d, "relaxed")


def test_is2re_as_s2ef_training_items(make_structure):
    base = [make_structure(i, natoms=4 + i) for i in range(3)]
    ds = IS2REAsS2EF(base)
    assert len(ds) == 6
    relaxed, initial = ds[2], ds[3]  # entry 1
    assert torch.equal(relaxed.pos, base[1].pos_relaxed) and torch.equal(relaxed.fixed, base[1].tags == 0)
    # the initial structure's forces are unknown: all atoms held, zero placeholder force
    assert (
        torch.equal(initial.pos, base[1].pos) and initial.fixed.all() and torch.equal(initial.force, torch.zeros(5, 3))
    )
    assert initial.y == pytest.approx(base[1].y_init)
