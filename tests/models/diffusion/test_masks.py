"""Conditioning masks for csp / lattice_given / inpaint."""

import pytest
import torch
from torch_geometric.data import Batch, Data

from sfm.models.diffusion.masks import mode_masks, training_masks


def make_batch():
    items = []
    for tags in ([0, 0, 1, 1, 2, 2], [0, 1, 1], [0, 1, 2]):  # second: no adsorbate
        n = len(tags)
        items.append(
            Data(
                atomic_numbers=torch.ones(n, dtype=torch.long),
                tags=torch.tensor(tags),
                pos=torch.zeros(n, 3),
                cell=torch.eye(3)[None] * 10,
                num_nodes=n,
            )
        )
    return Batch.from_data_list(items)


def test_mode_masks():
    b = make_batch()
    m = mode_masks(b, "csp")
    assert not m.atom_given.any() and not m.lattice_given.any()
    m = mode_masks(b, "lattice_given")
    assert not m.atom_given.any() and m.lattice_given.all()
    m = mode_masks(b, "inpaint")
    assert m.lattice_given.all()
    assert m.atom_given.tolist() == [True] * 4 + [False] * 2 + [True] * 3 + [True, True, False]
    explicit = torch.zeros(12, dtype=torch.bool)
    explicit[0] = True
    assert mode_masks(b, "inpaint", atom_given=explicit).atom_given.tolist() == explicit.tolist()
    assert torch.equal(m.tags, b.tags)
    del b.tags
    assert mode_masks(b, "csp").tags.tolist() == [-1] * 12
    with pytest.raises(ValueError, match="mode must be one of"):
        mode_masks(b, "bogus")


def test_training_mix_frequencies_and_fallback():
    b = make_batch()
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    for _ in range(600):
        m = training_masks(b, {"csp": 0.5, "lattice_given": 0.0, "inpaint": 0.5}, generator=g)
        counts += (~m.lattice_given).float()
        # graph 1 has nothing to generate under inpaint: it is trained as lattice_given
        assert not m.atom_given[6:9].any()
        # inpaint never gives a generated (tag 2) atom
        assert not m.atom_given[[4, 5, 11]].any()
        # csp graphs never have given atoms
        for gi, (lo, hi) in enumerate([(0, 6), (6, 9), (9, 12)]):
            if not m.lattice_given[gi]:
                assert not m.atom_given[lo:hi].any()
    assert ((counts / 600 - 0.5).abs() < 0.08).all()
    with pytest.raises(ValueError, match="unknown modes"):
        training_masks(b, {"cps": 1.0})


def test_tag_dropout_hides_whole_structures():
    b = make_batch()
    g = torch.Generator().manual_seed(1)
    hidden = 0
    for _ in range(300):
        m = training_masks(b, {"csp": 1.0}, tag_dropout=0.3, generator=g)
        for lo, hi in [(0, 6), (6, 9), (9, 12)]:
            t = m.tags[lo:hi]
            assert (t == -1).all() or torch.equal(t, b.tags[lo:hi])
            hidden += int((t == -1).all())
    assert abs(hidden / 900 - 0.3) < 0.06
