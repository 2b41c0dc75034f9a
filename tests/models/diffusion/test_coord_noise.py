"""Per-axis wrapped-normal process on fractional coordinates."""

import torch

from sfm.models.diffusion import wrapped_normal as wn
from sfm.models.diffusion.coord_noise import SIGMA_CAP, FracProcess


def test_sigma_is_cartesian_isotropic_until_saturation():
    proc = FracProcess(sigma_min=0.01)
    lengths = torch.tensor([[10.0, 12.0, 35.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    sig = torch.stack([proc.sigma(torch.full((2,), float(ti), dtype=torch.float64), lengths) for ti in t])  # [T,2,3]
    # t = 0: every axis resolved to sigma_min Angstrom
    assert torch.allclose(sig[0] * lengths, torch.full((2, 3), 0.01, dtype=torch.float64))
    # t = 1: the longest axis at the cap (uniform), the others saturated too
    assert torch.allclose(sig[-1], torch.full((2, 3), SIGMA_CAP, dtype=torch.float64))
    assert (sig[1:] >= sig[:-1]).all()
    cart = sig * lengths
    unsat = sig < SIGMA_CAP
    # unsaturated axes share one Cartesian sigma
    for k in range(len(t)):
        for b in range(2):
            c = cart[k, b][unsat[k, b]]
            if len(c) > 1:
                assert torch.allclose(c, c[0].expand_as(c))


def test_axis_lengths_given_or_reference():
    proc = FracProcess(ref_lengths=(8.0, 9.0, 30.0))
    cells = torch.diag_embed(torch.tensor([[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]))
    out = proc.axis_lengths(cells, torch.tensor([True, False]))
    assert torch.allclose(out, torch.tensor([[3.0, 4.0, 5.0], [8.0, 9.0, 30.0]]))
    proc.fit(cells)
    assert torch.allclose(proc.ref_lengths, torch.tensor([4.5, 5.5, 6.5]))


def test_noised_target_is_normalised_exact_score():
    g = torch.Generator().manual_seed(0)
    proc = FracProcess()
    for sigma in [0.001, 0.02, 0.2, 0.5]:
        x0 = torch.rand(20_000, 3, generator=g, dtype=torch.float64)
        s = torch.full_like(x0, sigma)
        xt, target = proc.add_noise(x0, s, g)
        assert xt.min() >= 0 and xt.max() < 1
        assert torch.allclose(target * wn.score_norm(s), wn.score(xt, x0, s))
        assert abs((target**2).mean().item() - 1) < 0.03
