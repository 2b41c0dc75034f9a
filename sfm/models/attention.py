"""SO(2)-equivariant graph attention (EquiformerV2).

For each edge j -> i:

1. rotate ``[x_j, x_i]`` into the edge frame (orders ``|m| <= mmax``);
2. SO(2) convolution, edge-conditioned by the radial MLP of (distance, elements); its
   extra invariant outputs give per-head attention features and gates;
3. attention logits: per head, layer norm of the features (attention re-normalisation),
   smooth leaky ReLU, dot with a learned vector; softmax over the edges of centre i,
   weighted by the smooth cutoff envelope so that edges enter and leave continuously;
4. values: separable S2 activation (gates for l=0, SiLU on the grid for l>0), second SO(2)
   convolution, multi-head;
5. weight values by attention, rotate back, sum over incoming edges, per-degree linear
   projection.
"""

from __future__ import annotations

import torch
from torch import nn

from sfm.models.graph import EdgeGraph
from sfm.models.radial import EdgeRadial
from sfm.models.s2_activation import S2Grid, SeparableS2Activation
from sfm.models.so2_conv import SO2Convolution
from sfm.models.so3 import SHLayout
from sfm.models.so3_linear import SO3Linear


def smooth_leaky_relu(x: torch.Tensor, slope: float = 0.2) -> torch.Tensor:
    """Leaky ReLU with a smooth kink: ``(1+a)/2 x + (1-a)/2 x (2 sigmoid(x) - 1)``."""
    return 0.5 * (1 + slope) * x + 0.5 * (1 - slope) * x * (2 * torch.sigmoid(x) - 1)


def edge_softmax(logits: torch.Tensor, dst: torch.Tensor, num_nodes: int, weight: torch.Tensor) -> torch.Tensor:
    """Softmax of ``logits [E, H]`` over the edges sharing a centre ``dst [E]``, with each
    edge's ``exp`` multiplied by ``weight [E]`` (the cutoff envelope). At least float32.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    index = dst[:, None].expand_as(logits)
    peak = logits.new_full((num_nodes, logits.shape[1]), -torch.inf)
    peak = peak.scatter_reduce(0, index, logits.detach(), "amax", include_self=True)
    expo = torch.exp(logits - peak[dst]) * weight.to(logits.dtype)[:, None]
    total = logits.new_zeros(num_nodes, logits.shape[1]).index_add_(0, dst, expo)
    return expo / (total[dst] + 1e-12)


class SO2GraphAttention(nn.Module):
    """``forward(x [N, dim, C], graph) -> [N, dim, out_channels]`` (see module docstring)."""

    def __init__(
        self,
        layout: SHLayout,
        channels: int,
        out_channels: int,
        hidden_channels: int,
        num_heads: int,
        alpha_channels: int,
        value_channels: int,
        num_rbf: int,
        edge_channels: int,
        num_tokens: int,
        grid: S2Grid,
        alpha_drop: float = 0.0,
    ):
        super().__init__()
        self.heads, self.alpha_channels, self.value_channels = num_heads, alpha_channels, value_channels
        self.conv1 = SO2Convolution(
            layout, 2 * channels, hidden_channels, extra_channels=num_heads * alpha_channels + hidden_channels
        )
        self.radial = EdgeRadial(num_rbf, num_tokens, edge_channels, layout.n_half * 2 * channels)
        self.alpha_norm = nn.LayerNorm(alpha_channels)
        bound = alpha_channels**-0.5
        self.alpha_dot = nn.Parameter(torch.empty(num_heads, alpha_channels).uniform_(-bound, bound))
        self.alpha_drop = nn.Dropout(alpha_drop)
        self.act = SeparableS2Activation(grid)
        self.conv2 = SO2Convolution(layout, hidden_channels, num_heads * value_channels)
        self.proj = SO3Linear(num_heads * value_channels, out_channels, layout.lmax)

    def forward(self, x: torch.Tensor, graph: EdgeGraph) -> torch.Tensor:
        num_edges = graph.src.shape[0]
        wigner = graph.wigner.to(x.dtype)
        msg = torch.bmm(wigner, graph.gather_pair(x))  # [E, n_red, 2C] in edge frames
        radial = self.radial(graph.rbf, graph.tokens[graph.src], graph.tokens[graph.dst])
        msg, extra = self.conv1(msg, radial)
        num_alpha = self.heads * self.alpha_channels
        feats, gates = extra[:, :num_alpha], extra[:, num_alpha:]
        feats = smooth_leaky_relu(self.alpha_norm(feats.view(num_edges, self.heads, self.alpha_channels)))
        logits = (feats * self.alpha_dot).sum(-1)  # [E, H]
        alpha = self.alpha_drop(edge_softmax(logits, graph.dst, graph.num_nodes, graph.envelope))
        msg, _ = self.conv2(self.act(gates, msg))
        msg = msg.view(num_edges, -1, self.heads, self.value_channels) * alpha.to(msg.dtype)[:, None, :, None]
        msg = torch.bmm(wigner.transpose(1, 2), msg.flatten(2))  # back to the global frame
        return self.proj(graph.sum_at_targets(msg))
