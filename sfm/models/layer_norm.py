"""Equivariant layer norm for SH features (EquiformerV2's ``layer_norm_sh``)."""

from __future__ import annotations

import torch
from torch import nn


class EquivariantLayerNormSH(nn.Module):
    """Separable layer norm of ``x [N, (lmax+1)^2, C]``.

    - l = 0: ordinary layer norm over the C channels (centred, scaled, affine weight + bias).
    - l > 0 together: divided by one RMS per atom, taken over channels and over all
      l > 0 coefficients with each degree weighted equally (``1 / ((2l+1) lmax)`` per
      coefficient); no centring and no bias, which would break equivariance. Affine
      weight per (degree, channel).
    Rotations act within each degree and preserve that RMS, so the norm is equivariant.
    """

    def __init__(self, lmax: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.lmax, self.eps = lmax, eps
        self.weight = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        degree = torch.tensor([l for l in range(lmax + 1) for _ in range(2 * l + 1)])
        self.register_buffer("degree", degree, persistent=False)
        balance = 1.0 / ((2 * degree[1:] + 1) * max(lmax, 1)).float()
        self.register_buffer("balance", balance, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lmax == 0:
            return nn.functional.layer_norm(x, x.shape[-1:], self.weight[0], self.bias, self.eps)
        # split, not x[:, 0] / x[:, 1:]: a slice's backward fills a zero tensor of x's size
        scalars, rest = x.split([1, x.shape[1] - 1], dim=1)
        scalars = nn.functional.layer_norm(scalars, x.shape[-1:], self.weight[0], self.bias, self.eps)
        ms = torch.einsum("nic,i->n", rest.pow(2), self.balance.to(rest.dtype)) / rest.shape[-1]
        rest = rest * torch.rsqrt(ms + self.eps)[:, None, None] * self.weight[self.degree[1:]]
        return torch.cat([scalars, rest], dim=1)
