"""Noise process on the full 3x3 lattice: DDPM on the log of its symmetric polar factor.

Representation. A lattice ``L`` ``[B, 3, 3]`` (rows a, b, c; right-handed) factors as
``L = S Q`` with ``S = (L L^T)^(1/2)`` symmetric positive definite and ``Q`` a rotation.
``S`` carries the whole cell (all lengths and angles: 6 numbers, the full 3x3 matrix up
to the orientation, which is a gauge: rotating the cell rotates nothing in the
structure), and it is rotation invariant, since ``L R^T`` has the same ``S``. The
process runs on

    Sigma = log S = 1/2 logm(L L^T)        (symmetric 3x3, any values)
    Z     = (Sigma - mean) / std           (entrywise; mean, std fitted to the data)

with a variance-preserving DDPM (cosine schedule ``alpha_bar(t)``, ``t`` in [0, 1]):
``Z_t = sqrt(alpha_bar) Z_0 + sqrt(1 - alpha_bar) eps``, ``eps`` a symmetric matrix
with independent N(0, 1) upper-triangle entries. The network predicts ``eps``; the
prior is ``Z_1 ~ N(0, I)``, i.e. ``S_1 = expm(mean + std * eps)``.

Why this choice (and not DiffCSP's DDPM on L with a zero mean, or MatterGen's cube):

- A prior sized to the data. ``mean`` and ``std`` are fitted per entry of ``log S``
  (:meth:`LatticeProcess.fit`), so the prior cell of an OC20 model is ~10 x 10 x 35 A
  with the spread of the data, and that of a bulk model is bulk-sized. DiffCSP's
  ``L_1 ~ N(0, I)`` in A is a ~1.7 A cell: harmless with its fully connected graph,
  ruinous with a radius graph (thousands of periodic images per atom within 6-12 A).
- Always a valid cell. ``expm`` of any symmetric matrix is positive definite, so every
  noisy and every sampled lattice is non-singular and right-handed: no clamping, and
  the radius graph of a noisy cell never explodes. DDPM on ``L`` itself can pass
  through flat or left-handed cells.
- Consistent with an equivariant denoiser. A fixed mean in a fixed orientation makes a
  process on ``L`` not rotation invariant, and a rotation-equivariant network cannot
  see the rotational part of its noise (it only sees ``L L^T`` and the atoms): an
  irreducible loss and a drift in sampling. On ``S`` there is no orientation left to
  mislead it. The head predicts a symmetric tensor from equivariant features (see
  ``model.py``); carried back to the frame of an input ``L`` as ``eps Q`` it rotates
  with the lattice.
- Relative noise. In log space a unit of noise is the same relative strain on every
  axis: the 35 A axis of an OC20 cell is not jittered 3.5 times harder than the 10 A
  axes, as an isotropic noise on ``L`` in A would do.

OC20 vacuum and anisotropy. Most of an OC20 cell's c axis (30-40 A) is vacuum, set by
the slab builder, not by physics; a, b follow the slab's supercell. The fitted
per-entry ``mean`` / ``std`` take that as it is: an anisotropic mean (c much longer than
a, b) and a small ``std`` on c when the data's vacuum hardly varies, so the prior does
not spend effort on the vacuum. Coordinates face the same anisotropy: noise isotropic in
fractional units would be 3.5 times larger along c, in A; ``coord_noise.py`` sets the
noise per axis from a Cartesian scale instead (see there).

Outputs are returned in the canonical orientation of :func:`canonical` (a along x, b in
the xy plane, c with positive z: the lower-triangular form ASE and OC20 store), a pure
rotation of ``S`` that leaves fractional coordinates unchanged.

Shapes: lattices ``[B, 3, 3]``, latents ``Z`` / noises ``eps`` ``[B, 3, 3]`` symmetric,
times ``t`` ``[B]``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Default prior before fitting: an OC20-sized cell (10 x 10 x 35 A) with a broad spread.
_DEFAULT_LENGTHS = (10.0, 10.0, 35.0)
_DEFAULT_STD_DIAG, _DEFAULT_STD_OFF = 0.25, 0.1
_STD_FLOOR = 0.01  # 1 % strain: the least spread per entry after fitting


def _sym_fn(mat: torch.Tensor, fn) -> torch.Tensor:
    """``V fn(w) V^T`` for symmetric ``mat = V diag(w) V^T``, computed in float64."""
    w, v = torch.linalg.eigh(mat.double())
    return ((v * fn(w).unsqueeze(-2)) @ v.transpose(-1, -2)).to(mat.dtype)


def log_lattice(lattice: torch.Tensor) -> torch.Tensor:
    """``Sigma = 1/2 logm(L L^T)`` ``[B, 3, 3]`` symmetric, rotation invariant."""
    return _sym_fn(lattice @ lattice.transpose(-1, -2), lambda w: 0.5 * torch.log(w))


def exp_lattice(sigma: torch.Tensor) -> torch.Tensor:
    """``S = expm(Sigma)`` ``[B, 3, 3]``: a symmetric positive-definite lattice."""
    return _sym_fn(sigma, torch.exp)


def polar_rotation(lattice: torch.Tensor) -> torch.Tensor:
    """The rotation ``Q`` of ``L = S Q`` (``S`` symmetric positive definite), ``[B, 3, 3]``."""
    inv_s = _sym_fn(lattice @ lattice.transpose(-1, -2), lambda w: w.rsqrt())
    return inv_s @ lattice


def canonical(lattice: torch.Tensor) -> torch.Tensor:
    """The same cell rotated to lower-triangular form (a along x, b in xy), ``[B, 3, 3]``.

    The Cholesky factor of the metric ``L L^T``; fractional coordinates are unchanged.
    """
    gram = (lattice @ lattice.transpose(-1, -2)).double()
    return torch.linalg.cholesky(gram).to(lattice.dtype)


def sym_noise(batch: int, generator: torch.Generator | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
    """``[B, 3, 3]`` symmetric noise whose 6 upper-triangle entries are iid N(0, 1)."""
    z = torch.randn(batch, 3, 3, generator=generator, dtype=dtype, device=device)
    upper = torch.triu(z)
    return upper + torch.triu(z, diagonal=1).transpose(-1, -2)


def upper_entries(mat: torch.Tensor) -> torch.Tensor:
    """The 6 independent entries ``[B, 6]`` of a symmetric ``[B, 3, 3]`` (upper triangle, row-major)."""
    i, j = torch.triu_indices(3, 3, device=mat.device)
    return mat[..., i, j]


class LatticeProcess(nn.Module):
    """DDPM on ``Z = (log S - mean) / std`` with a cosine ``alpha_bar(t)``; see the module doc.

    ``mean`` and ``std`` (``[3, 3]`` symmetric, in log-A) are buffers, so they travel in
    the state dict; :meth:`fit` sets them from training lattices.
    """

    def __init__(self, schedule_offset: float = 0.008, alpha_bar_min: float = 1e-4, z0_clip: float = 5.0):
        super().__init__()
        self.schedule_offset = schedule_offset
        self.alpha_bar_min = alpha_bar_min
        self.z0_clip = z0_clip
        std = torch.full((3, 3), _DEFAULT_STD_OFF)
        std.diagonal().fill_(_DEFAULT_STD_DIAG)
        self.register_buffer("mean", torch.diag(torch.tensor(_DEFAULT_LENGTHS).log()))
        self.register_buffer("std", std)

    @torch.no_grad()
    def fit(self, lattices: torch.Tensor) -> None:
        """Set ``mean`` / ``std`` to those of ``log S`` over ``lattices`` ``[M, 3, 3]`` (std floored at 0.01)."""
        sig = log_lattice(lattices.double())
        self.mean.copy_(sig.mean(0))
        std = sig.std(0, unbiased=False) if len(sig) > 1 else torch.zeros(3, 3, dtype=sig.dtype)
        self.std.copy_(std.clamp(min=_STD_FLOOR))

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """Cosine schedule (Nichol & Dhariwal) in continuous time, ``alpha_bar(0) = 1``, floored at ``alpha_bar_min``."""
        s = self.schedule_offset
        f = torch.cos((t.double() + s) / (1 + s) * math.pi / 2) ** 2
        f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
        return (f / f0).clamp(self.alpha_bar_min, 1.0).to(t.dtype)

    def encode(self, lattice: torch.Tensor) -> torch.Tensor:
        """Latent ``Z`` ``[B, 3, 3]`` of lattices ``[B, 3, 3]``."""
        return (log_lattice(lattice) - self.mean) / self.std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Symmetric positive-definite lattice ``S`` ``[B, 3, 3]`` of a latent ``Z``."""
        return exp_lattice(self.mean + self.std * z)

    def prior(self, batch: int, generator=None, dtype=torch.float32, device=None) -> torch.Tensor:
        """``Z_1 ~ N(0, I)`` (symmetric) ``[B, 3, 3]``."""
        return sym_noise(batch, generator, dtype, device)

    def add_noise(self, z0: torch.Tensor, t: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Z_t, eps)`` for clean ``Z_0`` ``[B, 3, 3]`` at times ``t`` ``[B]``."""
        eps = sym_noise(len(z0), generator, z0.dtype, z0.device)
        ab = self.alpha_bar(t)[:, None, None]
        return ab.sqrt() * z0 + (1 - ab).sqrt() * eps, eps

    def predict_z0(self, zt: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``Z_0`` implied by a noise estimate: ``(Z_t - sqrt(1 - ab) eps) / sqrt(ab)``."""
        ab = self.alpha_bar(t)[:, None, None]
        return (zt - (1 - ab).sqrt() * eps) / ab.sqrt()

    def clip_eps(self, zt: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``eps`` whose implied ``Z_0`` is clipped to ``+-z0_clip`` (data are unit-variance).

        Near ``t = 1`` an error in ``eps`` reaches ``Z_0`` multiplied by ``1 / sqrt(ab)``
        (100 here); unclipped, an imperfect network can throw the cell far off in one
        step (DDPM's x0 clipping). Samplers use this; training does not.
        """
        ab = self.alpha_bar(t)[:, None, None]
        z0 = self.predict_z0(zt, eps, t).clamp(-self.z0_clip, self.z0_clip)
        return (zt - ab.sqrt() * z0) / (1 - ab).sqrt().clamp(min=1e-12)

    def ancestral_step(self, zt, eps, t, s, generator=None) -> torch.Tensor:
        """One DDPM step ``t -> s < t``: a draw from ``q(Z_s | Z_t, Z_0 = predict_z0(...))``."""
        ab_t = self.alpha_bar(t)[:, None, None]
        ab_s = self.alpha_bar(s)[:, None, None]
        alpha = ab_t / ab_s
        z0 = self.predict_z0(zt, eps, t)
        mean = (ab_s.sqrt() * (1 - alpha) * z0 + alpha.sqrt() * (1 - ab_s) * zt) / (1 - ab_t)
        var = (1 - alpha) * (1 - ab_s) / (1 - ab_t)
        return mean + var.sqrt() * sym_noise(len(zt), generator, zt.dtype, zt.device)

    def ode_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``sqrt((1 - ab) / ab)`` ``[B]``: in ``Zbar = Z / sqrt(ab)`` the probability-flow ODE is ``dZbar = eps d(ode_sigma)``."""
        ab = self.alpha_bar(t)
        return ((1 - ab) / ab).sqrt()
