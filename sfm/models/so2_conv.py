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
    The loop over orders runs ``mmax + 1`` times, each one GEMM over all edges.
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

    def forward(self, x: torch.Tensor, radial: torch.Tensor | None = None):
        num_edges = x.shape[0]
        n0 = self.layout.lmax + 1
        x0 = x[:, :n0].reshape(num_edges, n0 * self.cin)
        if radial is not None:  # radial holds (l, |m|) weights in the order of the m blocks
            x0 = x0 * radial[:, : n0 * self.cin]
        out0 = self.fc_m0(x0)
        extra = out0[:, n0 * self.cout :] if self.extra else None
        pieces = [out0[:, : n0 * self.cout].reshape(num_edges, n0, self.cout)]
        offset = n0 * self.cin
        for (m, start, n), fc in zip(self.layout.m_slices[1:], self.fc_m):
            pair = x[:, start : start + 2 * n].reshape(num_edges, 2, n * self.cin)  # (+m, -m)
            if radial is not None:  # one weight per (l, |m|, channel), shared by +m and -m
                pair = pair * radial[:, None, offset : offset + n * self.cin]
                offset += n * self.cin
            y = fc(pair).view(num_edges, 2, 2, n, self.cout)  # [E, (+m,-m), (W_r,W_i), n, C]
            plus = y[:, 0, 0] - y[:, 1, 1]
            minus = y[:, 1, 0] + y[:, 0, 1]
            pieces += [plus, minus]
        return torch.cat(pieces, dim=1), extra
