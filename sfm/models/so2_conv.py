"""eSCN SO(2) convolution: per-order linear maps of edge-frame features.

In the edge frame (edge along the pole, :mod:`sfm.models.so3`), a rotation about the
edge turns each pair ``(x_{+m}, x_{-m})`` by the angle ``m * phi``. Writing the pair as
the complex number ``x_{+m} + i x_{-m}``, any complex-linear map commutes with it:

    y_{+m} = W_r x_{+m} - W_i x_{-m}        y_{-m} = W_r x_{-m} + W_i x_{+m}

with ``W_r, W_i`` mixing all degrees ``l >= m`` and all channels (the eSCN reduction of
an SO(3) tensor-product convolution). Order 0 is a plain real linear map, the only place
with a bias and with extra invariant outputs (used for attention logits and gates).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sfm.models.so3 import SHLayout


class SO2Convolution(nn.Module):
    """``forward(x [E, n_red, C_in], radial [E, n_half * C_in] | None)``
    ``-> (y [E, n_red, C_out], extra [E, extra_channels] | None)``.

    ``radial`` (per-edge weights from :class:`~sfm.models.radial.EdgeRadial`, one per
    (l, |m|, input channel), m-block by m-block as in the reduced layout with +m and -m
    sharing) scales the input first, when the layer is edge-conditioned.
    The loop over orders runs ``mmax + 1`` times, each one GEMM over all edges: for m > 0
    the pair ``[x_{+m}, x_{-m}]`` times the block matrix ``[[W_r, -W_i], [W_i, W_r]]``
    (built from ``fc_m[m - 1].weight = [W_r; W_i]``) gives ``[y_{+m}, y_{-m}]`` at once.
    The blocks are taken with ``split`` and ``cat``, never sliced or indexed: the backward
    of a slice writes into a zero tensor as large as all edges' features, which made the
    backward pass several times slower than the forward on CPU.
    """

    def __init__(self, layout: SHLayout, in_channels: int, out_channels: int, extra_channels: int = 0):
        super().__init__()
        self.layout = layout
        self.cin, self.cout, self.extra = in_channels, out_channels, extra_channels
        n0 = layout.lmax + 1
        self.fc_m0 = nn.Linear(n0 * in_channels, n0 * out_channels + extra_channels)
        nn.init.zeros_(self.fc_m0.bias)
        self.fc_m = nn.ModuleList()
        for m, _, n in layout.m_slices[1:]:
            fc = nn.Linear(n * in_channels, 2 * n * out_channels, bias=False)
            with torch.no_grad():
                fc.weight.mul_(1.0 / math.sqrt(2.0))  # two terms add per output
            self.fc_m.append(fc)
        # rows of x per m-block ([x_{+m}; x_{-m}] for m > 0), and radial columns per block
        self.rows = [n if m == 0 else 2 * n for m, _, n in layout.m_slices]
        self.radial_columns = [n * in_channels for _, _, n in layout.m_slices]

    @staticmethod
    def _pair_weight(weight: torch.Tensor) -> torch.Tensor:
        """``[W_r; W_i] [2K', K] -> [[W_r, -W_i], [W_i, W_r]] [2K', 2K]`` (``nn.Linear`` layout)."""
        w_r, w_i = weight.chunk(2, dim=0)
        return torch.cat([torch.cat([w_r, -w_i], dim=1), torch.cat([w_i, w_r], dim=1)], dim=0)

    def forward(self, x: torch.Tensor, radial: torch.Tensor | None = None):
        num_edges = x.shape[0]
        blocks = x.split(self.rows, dim=1)
        scales = radial.split(self.radial_columns, dim=1) if radial is not None else [None] * len(blocks)
        x0 = blocks[0].reshape(num_edges, -1)
        if radial is not None:  # radial holds (l, |m|) weights in the order of the m blocks
            x0 = x0 * scales[0]
        out0, extra = self.fc_m0(x0).split([self.rows[0] * self.cout, self.extra], dim=1)
        pieces = [out0.view(num_edges, -1, self.cout)]
        for block, scale, fc in zip(blocks[1:], scales[1:], self.fc_m):
            pair = block.reshape(num_edges, 2, -1)  # (+m, -m)
            if scale is not None:  # one weight per (l, |m|, channel), shared by +m and -m
                pair = pair * scale[:, None]
            y = nn.functional.linear(pair.reshape(num_edges, -1), self._pair_weight(fc.weight))
            pieces.append(y.view(num_edges, -1, self.cout))  # [y_{+m}; y_{-m}]
        return torch.cat(pieces, dim=1), extra if self.extra else None
