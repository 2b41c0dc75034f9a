"""Equivariant feed-forward block: per-degree linear, MLP on the sphere grid, per-degree linear."""

from __future__ import annotations

import torch
from torch import nn

from sfm.models.s2_activation import S2Grid
from sfm.models.so3_linear import SO3Linear


class FeedForward(nn.Module):
    """``forward(x [N, dim, C]) -> [N, dim, out_channels]`` (EquiformerV2 with grid MLP and
    separable activation).

    l>0 path: ``SO3Linear`` to the hidden width, values on the S2 grid, a point-wise MLP
    (``Linear - SiLU - Linear - SiLU - Linear``, no bias, shared by all grid points),
    back to coefficients. l=0 path: ``SiLU(Linear(x_0))`` replaces the l=0 coefficient.
    Then ``SO3Linear`` to ``out_channels``.
    """

    def __init__(self, channels: int, hidden_channels: int, out_channels: int, lmax: int, grid: S2Grid):
        super().__init__()
        self.grid = grid
        self.scalar_mlp = nn.Sequential(nn.Linear(channels, hidden_channels), nn.SiLU())
        self.lin1 = SO3Linear(channels, hidden_channels, lmax)
        self.grid_mlp = nn.Sequential(
            nn.Linear(hidden_channels, hidden_channels, bias=False),
            nn.SiLU(),
            nn.Linear(hidden_channels, hidden_channels, bias=False),
            nn.SiLU(),
            nn.Linear(hidden_channels, hidden_channels, bias=False),
        )
        self.lin2 = SO3Linear(hidden_channels, out_channels, lmax)

    def forward(self, x):
        gates = self.scalar_mlp(x.split([1, x.shape[1] - 1], dim=1)[0])  # not slices: see SO2Convolution
        h = self.grid.apply(self.grid_mlp, self.lin1(x))
        _, h = h.split([1, h.shape[1] - 1], dim=1)
        return self.lin2(torch.cat([gates.to(h.dtype), h], dim=1))
