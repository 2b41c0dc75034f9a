"""The wrapped normal distribution on the unit circle, applied per coordinate on the torus.

For a fractional coordinate ``x`` in ``[0, 1)`` with centre ``mu`` and width ``sigma``
(fractional units), the wrapped normal is the normal density summed over all periodic
images:

    p(x | mu, sigma) = sum_k N(x - mu + k; 0, sigma^2),        k integer

Coordinates are independent, so on the 3-torus a point's density is the product over
its three fractional axes, and each axis may carry its own ``sigma``. Everything here
is elementwise and broadcasts: ``x``, ``mu``, ``sigma`` of any matching shapes
(typically ``[N, 3]`` with ``sigma`` ``[N, 3]``).

Evaluation is exact to double precision with two series: for ``sigma < 0.25`` the image
sum (images beyond +-4 weigh below ``exp(-37)``), otherwise the dual Fourier series
(Jacobi theta function) ``p = 1 + 2 sum_n exp(-2 pi^2 n^2 sigma^2) cos(2 pi n d)``
(terms beyond n = 8 weigh below ``exp(-79)``).

The score ``d log p / dx`` is the denoising target on the torus (DiffCSP); its scale
``~ 1 / sigma`` spans three decades across noise levels, so the network predicts it
divided by ``sqrt(E[score^2])`` (:func:`score_norm`), which makes the target unit
variance at every ``sigma``.
"""

from __future__ import annotations

import functools
import math

import torch

_SWITCH = 0.25  # below: image sum; at or above: Fourier series
_IMAGES = torch.arange(-4, 5, dtype=torch.float64)  # [9]
_FREQS = torch.arange(1, 9, dtype=torch.float64)  # [8]
_TABLE_LO, _TABLE_HI, _TABLE_SIZE = 0.05, 1.0, 1024  # sigma range of the score-norm table


def wrap_delta(d: torch.Tensor) -> torch.Tensor:
    """``d`` mapped to ``[-0.5, 0.5)``: the displacement to the nearest image."""
    return d - torch.floor(d + 0.5)


def _series(x, mu, sigma):
    """log p and score, float64, elementwise; each element by the series that suits its sigma."""
    d, sigma = torch.broadcast_tensors(wrap_delta(x.double() - mu.double()), sigma.double())
    logp, score = torch.empty_like(d), torch.empty_like(d)
    small = sigma < _SWITCH
    # image sum (small sigma)
    dk = d[small][:, None] + _IMAGES.to(d.device)  # [M, 9]
    s = sigma[small][:, None]
    a = -0.5 * (dk / s) ** 2
    logp[small] = torch.logsumexp(a, dim=-1) - torch.log(s[:, 0]) - 0.5 * math.log(2 * math.pi)
    score[small] = (torch.softmax(a, dim=-1) * (-dk / s**2)).sum(-1)
    # Fourier series (large sigma)
    large = ~small
    n = _FREQS.to(d.device)
    q = torch.exp(-2 * math.pi**2 * n**2 * sigma[large][:, None] ** 2)  # [M, 8]
    arg = 2 * math.pi * n * d[large][:, None]
    p = 1 + 2 * (q * torch.cos(arg)).sum(-1)
    dp = -2 * (q * 2 * math.pi * n * torch.sin(arg)).sum(-1)
    logp[large] = torch.log(p)
    score[large] = dp / p
    return logp, score


def log_prob(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Elementwise log density of ``x`` under the wrapped normal (``mu``, ``sigma``), dtype of ``x``."""
    return _series(x, mu, sigma)[0].to(x.dtype)


def score(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Elementwise ``d/dx log p(x | mu, sigma)`` (exact, summed over images), dtype of ``x``."""
    return _series(x, mu, sigma)[1].to(x.dtype)


def sample(mu: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A draw ``(mu + sigma * z) mod 1`` in ``[0, 1)``, shape of ``mu`` broadcast with ``sigma``."""
    mu, sigma = torch.broadcast_tensors(mu, sigma)
    z = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    wrapped = torch.remainder(mu + sigma * z, 1.0)
    return torch.where(wrapped >= 1.0, torch.zeros_like(wrapped), wrapped)


def expected_sq_score(sigma: torch.Tensor, points: int = 256) -> torch.Tensor:
    """``E_{x ~ p}[score(x)^2]`` per element of ``sigma`` (float64), by quadrature.

    The periodic trapezoid rule on ``points`` nodes is spectrally accurate here (the
    integrand is smooth and periodic); below ``sigma = 0.05`` the images' share is
    under ``exp(-50)`` and the value is the normal one, ``1 / sigma^2``.
    """
    sigma = sigma.double()
    grid = torch.arange(points, dtype=torch.float64, device=sigma.device) / points  # [P]
    s = sigma.clamp(min=_TABLE_LO)[..., None]
    logp, sc = _series(grid, torch.zeros_like(grid), s)
    quad = (logp.exp() * sc**2).mean(-1)
    return torch.where(sigma < _TABLE_LO, 1.0 / sigma**2, quad)


@functools.lru_cache(maxsize=None)
def _norm_table() -> tuple[torch.Tensor, torch.Tensor]:
    log_sigma = torch.linspace(math.log(_TABLE_LO), math.log(_TABLE_HI), _TABLE_SIZE, dtype=torch.float64)
    return log_sigma, 0.5 * torch.log(expected_sq_score(log_sigma.exp()))


def score_norm(sigma: torch.Tensor) -> torch.Tensor:
    """``sqrt(E[score^2])`` per element of ``sigma`` (dtype of ``sigma``): the target scale.

    Fast path for training and sampling: exact ``1 / sigma`` below 0.05, log-log linear
    interpolation of a table of :func:`expected_sq_score` above (relative error < 1e-4),
    clamped at ``sigma = 1`` (beyond it the wrapped normal is uniform to 5e-9).
    Any fixed function would do as long as training and sampling share it; this one
    makes the normalised target unit-variance.
    """
    log_sigma, log_norm = _norm_table()
    ls = sigma.double().log().clamp(max=math.log(_TABLE_HI))
    pos = (ls - log_sigma[0]) / (log_sigma[1] - log_sigma[0])
    i0 = pos.floor().clamp(0, _TABLE_SIZE - 2).long()
    w = (pos - i0).clamp(0, 1)
    table = log_norm.to(sigma.device)
    interp = torch.lerp(table[i0], table[i0 + 1], w)
    out = torch.where(ls < log_sigma[0], -ls, interp).exp()
    return out.to(sigma.dtype)
