"""Point-wise nonlinearities on the sphere: project coefficients to a grid, act, project back.

A pointwise function of a band-limited signal is not band-limited, so the projection
back is exact only up to aliasing: the activation is equivariant to within an error that
falls quickly with ``resolution`` (EquiformerV2 uses 18 x 18 points). Tests that need
round-off equivariance use a finer grid.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn


class S2Grid(nn.Module):
    """Linear maps between SH coefficients and values on a ``resolution^2`` sphere grid.

    ``to_grid [G, n]`` and ``from_grid [n, G]`` act on the coefficient dimension of
    ``[..., n, C]`` tensors; ``from_grid @ to_grid = I``. ``coefficients`` (optional long
    index into the full e3nn layout) restricts both to a subset, e.g. the edge-frame
    reduced layout of :mod:`sfm.models.so3`. Built from e3nn's ``ToS2Grid``/``FromS2Grid``
    (integral normalisation; longitude ``alpha`` turns about the y pole).
    """

    def __init__(self, lmax: int, resolution: int, coefficients: torch.Tensor | None = None):
        super().__init__()
        if resolution % 2:
            raise ValueError(f"grid resolution must be even, got {resolution}")
        dim = (lmax + 1) ** 2
        res = (resolution, resolution)
        with torch.no_grad():
            to_grid = o3.ToS2Grid(lmax, res, normalization="integral", dtype=torch.float64)
            from_grid = o3.FromS2Grid(res, lmax, normalization="integral", dtype=torch.float64)
            to_mat = to_grid(torch.eye(dim, dtype=torch.float64)).reshape(dim, -1).T  # [G, dim]
            eye_grid = torch.eye(resolution * resolution, dtype=torch.float64).view(-1, *res)
            from_mat = from_grid(eye_grid).T  # [dim, G]
        if coefficients is not None:
            to_mat, from_mat = to_mat[:, coefficients], from_mat[coefficients]
        self.register_buffer("to_grid", to_mat.to(torch.get_default_dtype()).contiguous(), persistent=False)
        self.register_buffer("from_grid", from_mat.to(torch.get_default_dtype()).contiguous(), persistent=False)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., n, C] -> [..., G, C]``."""
        return torch.matmul(self.to_grid.to(x.dtype), x)

    def back(self, g: torch.Tensor) -> torch.Tensor:
        """``[..., G, C] -> [..., n, C]``."""
        return torch.matmul(self.from_grid.to(g.dtype), g)


class SeparableS2Activation(nn.Module):
    """EquiformerV2's separable S2 activation.

    ``forward(scalars [M, C], x [M, n, C]) -> [M, n, C]``: the l=0 output is
    ``SiLU(scalars)`` (a separate invariant path), the l>0 outputs are those of
    ``SiLU`` applied on the grid to the whole signal ``x``. Coefficient 0 of ``x`` must be
    l=0 (true for both the full and the reduced layout).
    """

    def __init__(self, grid: S2Grid):
        super().__init__()
        self.grid = grid

    def forward(self, scalars: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.grid.back(nn.functional.silu(self.grid.project(x)))
        return torch.cat([nn.functional.silu(scalars)[:, None], out[:, 1:]], dim=1)
