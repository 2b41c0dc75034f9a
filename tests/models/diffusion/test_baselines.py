"""Baseline samplers (sfm/models/diffusion/baselines.py): inputs held where the mode says."""

import pytest
import torch

from sfm.data import collate
from sfm.data.lattice import cart_to_frac
from sfm.models.diffusion.baselines import sample_baseline


def test_random_and_initial_baselines(make_structure):
    batch = collate([make_structure(i, natoms=5 + i) for i in range(3)])
    g = torch.Generator().manual_seed(0)
    assert sample_baseline(batch, "baseline_initial", "csp", g) == (batch.pos, batch.cell)
    given = batch.tags != 2
    pos, cell = sample_baseline(batch, "baseline_random", "inpaint", g, atom_given=given)
    assert torch.equal(cell, batch.cell) and torch.equal(pos[given], batch.pos[given])
    frac = cart_to_frac(pos[~given], cell[batch.batch][~given])
    assert ((frac > -1e-5) & (frac < 1 + 1e-5)).all() and not torch.allclose(pos[~given], batch.pos[~given])
    pool = torch.stack([torch.eye(3) * s for s in (5.0, 6.0)])
    _, drawn = sample_baseline(batch, "baseline_random", "csp", g, pool=pool)
    assert all(any(torch.equal(c, p) for p in pool) for c in drawn)
    with pytest.raises(ValueError, match="baseline must be one of"):
        sample_baseline(batch, "baseline_magic", "csp", g)
