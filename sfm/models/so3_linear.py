"""Equivariant linear map of SH features: one channel-mixing matrix per degree."""

from __future__ import annotations

import math

import torch
from torch import nn


class SO3Linear(nn.Module):
    """``[N, (lmax+1)^2, C_in] -> [N, (lmax+1)^2, C_out]``, ``y_lm = W_l x_lm`` (+ bias on l=0).

    Mixing channels with the same matrix for every order m of a degree commutes with
    rotations; a bias is allowed on the invariant l=0 coefficient only.
    """

    def __init__(self, in_channels: int, out_channels: int, lmax: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_channels)
        self.weight = nn.Parameter(torch.empty(lmax + 1, in_channels, out_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        degree = torch.tensor([l for l in range(lmax + 1) for _ in range(2 * l + 1)])
        self.register_buffer("degree", degree, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight[self.degree]  # [dim, in, out]
        out = torch.einsum("nic,ico->nio", x, weight.to(x.dtype))
        scalars, rest = out.split([1, out.shape[1] - 1], dim=1)  # not slices: see SO2Convolution
        return torch.cat([scalars + self.bias.to(out.dtype), rest], dim=1)
