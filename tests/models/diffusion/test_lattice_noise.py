"""Lattice process: log-symmetric representation, canonical orientation, DDPM consistency."""

import math

import numpy as np
import torch
from ase.geometry import cell_to_cellpar, cellpar_to_cell

from sfm.models.diffusion.lattice_noise import (
    LatticeProcess,
    canonical,
    exp_lattice,
    log_lattice,
    polar_rotation,
    sym_noise,
    upper_entries,
)


def random_rotation(g, n=1):
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q * torch.sign(torch.linalg.det(q))[:, None, None]


def random_cells(g, n):
    """Skewed right-handed cells, OC20-like and bulk-like."""
    cells = torch.randn(n, 3, 3, generator=g, dtype=torch.float64) * 2
    cells = cells + torch.diag(torch.tensor([9.0, 11.0, 30.0], dtype=torch.float64))
    return cells


def test_log_exp_round_trip_and_rotation_invariance():
    g = torch.Generator().manual_seed(0)
    cells = random_cells(g, 32)
    sig = log_lattice(cells)
    assert torch.allclose(sig, sig.transpose(-1, -2))
    s = exp_lattice(sig)
    # S is the same cell (same metric) and symmetric positive definite
    assert torch.allclose(s @ s.transpose(-1, -2), cells @ cells.transpose(-1, -2), atol=1e-9)
    assert (torch.linalg.eigvalsh(s) > 0).all()
    rot = random_rotation(g, 32)
    assert torch.allclose(log_lattice(cells @ rot.transpose(-1, -2)), sig, atol=1e-10)
    q = polar_rotation(cells)
    assert torch.allclose(s @ q, cells, atol=1e-9)
    assert torch.allclose(q @ q.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(32, 3, 3), atol=1e-10)
    assert torch.allclose(torch.linalg.det(q), torch.ones(32, dtype=torch.float64))


def test_canonical_orientation_matches_ase_cellpar_convention():
    g = torch.Generator().manual_seed(1)
    cells = random_cells(g, 16)
    can = canonical(cells)
    for c, k in zip(cells.numpy(), can.numpy()):
        ref = cellpar_to_cell(cell_to_cellpar(c))  # ASE: a along x, b in the xy plane
        np.testing.assert_allclose(k, ref, atol=1e-9)
    # a pure rotation: fractional coordinates keep their Cartesian geometry
    rot = torch.linalg.solve(cells, can)
    assert torch.allclose(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(16, 3, 3), atol=1e-9)


def test_sym_noise_has_unit_independent_upper_entries():
    g = torch.Generator().manual_seed(2)
    e = sym_noise(50_000, g, torch.float64)
    assert torch.equal(e, e.transpose(-1, -2))
    u = upper_entries(e)
    assert u.shape == (50_000, 6)
    cov = torch.cov(u.T)
    assert torch.allclose(cov, torch.eye(6, dtype=torch.float64), atol=0.03)


def test_schedule_endpoints_and_monotone():
    proc = LatticeProcess()
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    ab = proc.alpha_bar(t)
    assert ab[0].item() == 1.0
    assert abs(ab[-1].item() - proc.alpha_bar_min) < 1e-12
    assert (ab[1:] <= ab[:-1]).all()
    assert proc.ode_sigma(t)[0].item() == 0.0


def test_fit_normalises_data_and_prior_is_data_sized():
    g = torch.Generator().manual_seed(3)
    cells = random_cells(g, 400)
    proc = LatticeProcess().double()
    proc.fit(cells)
    z = proc.encode(cells)
    assert torch.allclose(z.mean(0), torch.zeros(3, 3, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(3, 3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(proc.decode(z) @ proc.decode(z), cells @ cells.transpose(-1, -2), atol=1e-8)
    prior = proc.decode(proc.prior(2000, g, torch.float64))
    lengths, data_lengths = prior.norm(dim=-1), cells.norm(dim=-1)
    # prior lengths follow the data's per-axis scale (10 x 10 x 30 A here), not a cube
    assert torch.allclose(lengths.median(0).values, data_lengths.median(0).values, rtol=0.05)
    assert (torch.linalg.det(prior) > 0).all()


def test_forward_marginals_and_reverse_consistency():
    """q(Z_t | Z_0) has the stated moments; predict_z0 inverts it; the DDPM posterior is exact.

    Reverse consistency: for Z_0 fixed, drawing Z_t ~ q(Z_t|Z_0) and then Z_s by the
    ancestral step with the true eps must give q(Z_s | Z_0) (the posterior marginalises
    back to the forward marginal).
    """
    g = torch.Generator().manual_seed(4)
    proc = LatticeProcess().double()
    n = 40_000
    z0 = torch.full((n, 3, 3), 0.7, dtype=torch.float64)
    t = torch.full((n,), 0.6, dtype=torch.float64)
    zt, eps = proc.add_noise(z0, t, g)
    ab = proc.alpha_bar(t)[0]
    u = upper_entries(zt)
    assert torch.allclose(u.mean(0), torch.full((6,), 0.7 * math.sqrt(ab), dtype=torch.float64), atol=0.02)
    assert torch.allclose(u.var(0), torch.full((6,), 1 - ab.item(), dtype=torch.float64), rtol=0.03)
    assert torch.allclose(proc.predict_z0(zt, eps, t), z0, atol=1e-10)
    s = torch.full((n,), 0.35, dtype=torch.float64)
    zs = proc.ancestral_step(zt, eps, t, s, g)
    ab_s = proc.alpha_bar(s)[0]
    us = upper_entries(zs)
    assert torch.allclose(us.mean(0), torch.full((6,), 0.7 * math.sqrt(ab_s), dtype=torch.float64), atol=0.02)
    assert torch.allclose(us.var(0), torch.full((6,), 1 - ab_s.item(), dtype=torch.float64), rtol=0.03)
    # to t = 0 the step is deterministic and returns Z_0
    z_end = proc.ancestral_step(zt, eps, t, torch.zeros_like(t), g)
    assert torch.allclose(z_end, z0, atol=1e-9)
