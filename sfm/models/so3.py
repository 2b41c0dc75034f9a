"""Spherical-harmonic feature layout and the per-edge rotation into the edge frame.

Conventions (stated once, used by every module of the backbone):

- Node features are ``x [N, (lmax+1)^2, C]``: e3nn real spherical harmonics, coefficient
  ``i = l*l + l + m`` for degree ``l`` and order ``m = -l..l``. e3nn's l=1 block is
  ``(x, y, z)`` in that order and its Wigner-D for l=1 is the rotation matrix itself, so
  ``x[:, 1:4]`` rotates like a Cartesian vector: ``x'[:, 1:4, c] = R @ x[:, 1:4, c]``.
- e3nn's pole is the **y axis**: a function symmetric about y has only ``m = 0``
  coefficients. The *edge frame* of an edge with unit direction ``u`` is any rotation
  ``R`` with ``R @ u = y``; in it the SO(2) convolution acts per order ``m``.
- In the edge frame only orders ``|m| <= mmax`` are kept ("reduced" layout, m-major):
  ``[m=0: l=0..lmax] [m=+1: l=1..lmax] [m=-1: l=1..lmax] [m=+2: l=2..lmax] ...``.

The Wigner-D matrices are computed from the rotation matrix by projecting spherical
harmonics at fixed sample points, ``D_l(R) = Y_l(R X) pinv(Y_l(X))``: a polynomial in
the entries of ``R``, so its gradient wrt positions is finite everywhere (angle-based
formulas divide by zero for edges along the pole, which crystals have plenty of).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from e3nn import o3
from torch import nn


@dataclass(frozen=True)
class SHLayout:
    """Index bookkeeping for features up to degree ``lmax``, edge-frame orders up to ``mmax``.

    Attributes (all long tensors on CPU):
      ``degree [dim]``: l of each full coefficient; ``order [dim]``: m of each.
      ``reduced [n_red]``: full index of each edge-frame coefficient (m-major order).
      ``m_slices``: ``[(m, start, n)]``; order m occupies rows ``start:start+n`` (+m) and,
      for m > 0, ``start+n:start+2n`` (-m) of the reduced layout.
    """

    lmax: int
    mmax: int
    degree: torch.Tensor
    order: torch.Tensor
    reduced: torch.Tensor
    m_slices: tuple

    @property
    def dim(self) -> int:
        return (self.lmax + 1) ** 2

    @property
    def n_reduced(self) -> int:
        return len(self.reduced)

    @property
    def n_half(self) -> int:
        """Number of (l, |m|) pairs kept in the edge frame (+m and -m counted once)."""
        return sum(self.lmax - m + 1 for m in range(self.mmax + 1))


def sh_layout(lmax: int, mmax: int) -> SHLayout:
    """Build the :class:`SHLayout` for ``0 <= mmax <= lmax``."""
    if not 0 <= mmax <= lmax:
        raise ValueError(f"need 0 <= mmax <= lmax, got lmax={lmax}, mmax={mmax}")
    degree = torch.tensor([l for l in range(lmax + 1) for _ in range(2 * l + 1)])
    order = torch.tensor([m for l in range(lmax + 1) for m in range(-l, l + 1)])
    reduced, m_slices = [], []
    for m in range(mmax + 1):
        ls = range(m, lmax + 1)
        m_slices.append((m, len(reduced), len(ls)))
        for sign in (1,) if m == 0 else (1, -1):
            reduced += [l * l + l + sign * m for l in ls]
    return SHLayout(lmax, mmax, degree, order, torch.tensor(reduced), tuple(m_slices))


def edge_frame(unit: torch.Tensor) -> torch.Tensor:
    """Rotations ``R [E, 3, 3]`` with ``R @ unit[e] = y`` for unit vectors ``unit [E, 3]``.

    The minimal rotation taking ``u`` to ``y`` (Rodrigues, ``I + K + K^2 / (1 + u.y)``) is
    singular only at ``u = -y``; edges pointing into the lower half take ``u`` to ``-y``
    instead and flip with a fixed 180 degree turn about x. The spin about the edge axis
    jumps between the halves; the SO(2)-equivariant layers do not see it.
    """
    upper = unit[:, 1] >= 0
    target = torch.where(upper, 1.0, -1.0).to(unit.dtype)  # +y or -y
    # v = u x (target * y); c = u . (target * y) >= 0
    ux, uy, uz = unit.unbind(-1)
    vx, vy, vz = -uz * target, torch.zeros_like(uy), ux * target
    c = uy * target
    zero = torch.zeros_like(c)
    k = torch.stack([zero, -vz, vy, vz, zero, -vx, -vy, vx, zero], -1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=unit.dtype, device=unit.device)
    rot = eye + k + (k @ k) / (1.0 + c)[:, None, None]
    flip = torch.where(upper, 1.0, -1.0).to(unit.dtype)  # diag(1, flip, flip): 180 deg about x
    return rot * torch.stack([torch.ones_like(flip), flip, flip], -1)[:, :, None]


def _sphere_points(n: int) -> torch.Tensor:
    """``n`` well-spread unit vectors (Fibonacci lattice), float64 ``[n, 3]``."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    r = torch.sqrt(1.0 - z * z)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)


class EdgeRotation(nn.Module):
    """Wigner-D matrices taking node features into each edge's frame (reduced rows).

    ``forward(unit [E, 3]) -> D [E, n_red, dim]`` with ``x_edge = D @ x`` (``[E, dim, C]``
    to ``[E, n_red, C]``, orders ``|m| > mmax`` dropped) and ``x = D^T @ x_edge`` back.
    ``D`` is the rows of the block-diagonal ``D(R)`` of :func:`edge_frame`'s ``R`` that
    the reduced layout keeps; it is computed once per forward and shared by all blocks.
    """

    def __init__(self, lmax: int, mmax: int):
        super().__init__()
        self.layout = sh_layout(lmax, mmax)
        self.lmax = lmax
        # 2(2 lmax + 1) Fibonacci points: every degree's SH matrix is well conditioned.
        points = _sphere_points(4 * lmax + 2)
        sh = o3.spherical_harmonics(list(range(lmax + 1)), points, normalize=True)  # [K, dim]
        pinv = torch.zeros(len(points), self.layout.dim, dtype=torch.float64)
        for l in range(lmax + 1):
            block = slice(l * l, (l + 1) ** 2)
            pinv[:, block] = torch.linalg.pinv(sh[:, block].T)  # [K, 2l+1]
        same_degree = self.layout.degree[self.layout.reduced][:, None] == self.layout.degree[None, :]
        self.register_buffer("points", points.to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("pinv", pinv.to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("block_mask", same_degree.to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("reduced", self.layout.reduced, persistent=False)

    def forward(self, unit: torch.Tensor) -> torch.Tensor:
        rot = edge_frame(unit)  # [E, 3, 3]
        rotated = torch.einsum("eab,kb->eka", rot, self.points.to(unit.dtype))  # R x_k, [E, K, 3]
        sh = o3.spherical_harmonics(list(range(self.lmax + 1)), rotated, normalize=False)
        sh = sh[:, :, self.reduced]  # [E, K, n_red]
        wigner = torch.einsum("ekr,kj->erj", sh, self.pinv.to(unit.dtype))
        return wigner * self.block_mask.to(unit.dtype)
