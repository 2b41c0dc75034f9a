"""Wrapped normal on the torus: density, exact score, its RMS, sampling."""

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sfm.models.diffusion import wrapped_normal as wn


def brute_density(x, mu, sigma, images=60):
    """Independent reference: the image sum with many images, in numpy."""
    k = np.arange(-images, images + 1)
    d = x - mu + k
    return np.exp(-0.5 * (d / sigma) ** 2).sum() / (sigma * math.sqrt(2 * math.pi))


@settings(max_examples=200, deadline=None)
@given(
    x=st.floats(0, 1, exclude_max=True),
    mu=st.floats(0, 1, exclude_max=True),
    sigma=st.floats(0.002, 3.0),
)
def test_density_matches_brute_force_image_sum(x, mu, sigma):
    ours = wn.log_prob(
        torch.tensor(x, dtype=torch.float64),
        torch.tensor(mu, dtype=torch.float64),
        torch.tensor(sigma, dtype=torch.float64),
    ).item()
    ref = brute_density(x, mu, sigma)
    if ref > 1e-250:
        assert abs(ours - math.log(ref)) < 1e-9


def test_score_is_gradient_of_log_density_autograd_and_finite_differences():
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.003, 0.02, 0.1, 0.2, 0.249, 0.25, 0.3, 0.5, 0.8], dtype=torch.float64)[:, None]
    x = torch.rand(9, 64, generator=g, dtype=torch.float64).requires_grad_()
    mu = torch.rand(9, 64, generator=g, dtype=torch.float64)
    logp = wn.log_prob(x, mu, sigma)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    score = wn.score(x.detach(), mu, sigma)
    rel = (score - grad).abs() / (1.0 + grad.abs())
    assert rel.max() < 1e-9
    h = 1e-6
    fd = (wn.log_prob(x.detach() + h, mu, sigma) - wn.log_prob(x.detach() - h, mu, sigma)) / (2 * h)
    # finite differences lose precision where the density is tiny (far tail, small sigma)
    ok = logp.detach() > -30
    assert ((score - fd).abs() / (1.0 + fd.abs()))[ok].max() < 1e-4


def test_density_normalised_periodic_and_continuous_across_series_switch():
    grid = torch.arange(4000, dtype=torch.float64) / 4000
    for sigma in [0.01, 0.1, 0.25, 0.6, 2.0]:
        s = torch.tensor(sigma, dtype=torch.float64)
        p = wn.log_prob(grid, torch.tensor(0.3, dtype=torch.float64), s).exp()
        assert abs(p.mean().item() - 1.0) < 1e-10
        # periodic: x and x + 1 (and mu shifted by an integer) agree
        assert torch.allclose(
            wn.log_prob(grid + 1, torch.tensor(2.3, dtype=torch.float64), s),
            wn.log_prob(grid, torch.tensor(0.3, dtype=torch.float64), s),
            atol=1e-10,
        )
    below, above = torch.tensor(0.25 - 1e-12, dtype=torch.float64), torch.tensor(0.25, dtype=torch.float64)
    assert torch.allclose(wn.log_prob(grid, grid * 0, below), wn.log_prob(grid, grid * 0, above), atol=1e-9)
    assert torch.allclose(wn.score(grid, grid * 0, below), wn.score(grid, grid * 0, above), atol=1e-8)


def test_expected_sq_score_matches_monte_carlo_and_normal_limit():
    g = torch.Generator().manual_seed(1)
    for sigma in [0.03, 0.1, 0.3, 0.5]:
        s = torch.full((50_000,), sigma, dtype=torch.float64)
        x = wn.sample(torch.zeros_like(s), s, generator=g)
        mc = (wn.score(x, torch.zeros_like(s), s) ** 2).mean().item()
        exact = wn.expected_sq_score(torch.tensor(sigma)).item()
        assert abs(mc / exact - 1) < 0.04, (sigma, mc, exact)
    small = torch.tensor([1e-3, 0.01, 0.04], dtype=torch.float64)
    assert torch.allclose(wn.expected_sq_score(small), 1 / small**2)


def test_score_norm_table_matches_exact_and_is_continuous():
    sigma = torch.logspace(-3, 0, 777, dtype=torch.float64)
    exact = wn.expected_sq_score(sigma).sqrt()
    fast = wn.score_norm(sigma)
    assert ((fast / exact - 1).abs()).max() < 1e-4
    assert wn.score_norm(torch.tensor([0.5], dtype=torch.float32)).dtype == torch.float32


def test_samples_have_wrapped_normal_moments():
    g = torch.Generator().manual_seed(2)
    for sigma in [0.05, 0.2, 0.4]:
        mu = torch.full((100_000,), 0.9)
        x = wn.sample(mu, torch.tensor(sigma), generator=g)
        assert x.min() >= 0 and x.max() < 1
        # E[exp(2 pi i (x - mu))] = exp(-2 pi^2 sigma^2)
        ang = 2 * math.pi * (x - mu).double()
        assert abs(ang.cos().mean().item() - math.exp(-2 * math.pi**2 * sigma**2)) < 0.01
        assert abs(ang.sin().mean().item()) < 0.01
