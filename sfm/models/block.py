"""One transformer block: norm, SO(2) attention, norm, feed-forward, each residual.

Optional conditioning (e.g. a diffusion time embedding) modulates both norms
adaptively: ``h -> h * (1 + scale) + shift``, ``scale`` per channel for every degree (an
invariant per-channel factor keeps equivariance) and ``shift`` on the l=0 coefficient
only. The modulation layer starts at zero, so an untrained conditioning path is the
identity.
"""

from __future__ import annotations

import torch
from torch import nn

from sfm.models.attention import SO2GraphAttention
from sfm.models.feed_forward import FeedForward
from sfm.models.graph import EdgeGraph
from sfm.models.layer_norm import EquivariantLayerNormSH


class GraphDropPath(nn.Module):
    """Stochastic depth per structure: in training, zero a residual branch for a random
    subset of graphs (probability ``rate``) and rescale the others by ``1 / (1 - rate)``.

    ``forward(x [N, ...], batch [N], num_graphs) -> same shape``.
    """

    def __init__(self, rate: float):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = torch.rand(num_graphs, device=x.device) >= self.rate
        scale = keep.to(x.dtype) / (1.0 - self.rate)
        return x * scale[batch].view(-1, *([1] * (x.dim() - 1)))


class TransformerBlock(nn.Module):
    """``forward(x [N, dim, C], graph, cond [N, cond_dim] | None) -> [N, dim, C]``."""

    def __init__(
        self,
        attention: SO2GraphAttention,
        ffn: FeedForward,
        lmax: int,
        channels: int,
        cond_dim: int = 0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = EquivariantLayerNormSH(lmax, channels)
        self.attention = attention
        self.norm2 = EquivariantLayerNormSH(lmax, channels)
        self.ffn = ffn
        self.drop_path = GraphDropPath(drop_path)
        self.modulation = None
        if cond_dim:
            self.modulation = nn.Linear(cond_dim, 4 * channels)
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    @staticmethod
    def _modulate(h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        h = h * (1.0 + scale[:, None, :]).to(h.dtype)
        return torch.cat([h[:, :1] + shift[:, None, :].to(h.dtype), h[:, 1:]], dim=1)

    def forward(self, x: torch.Tensor, graph: EdgeGraph, cond: torch.Tensor | None = None) -> torch.Tensor:
        mods = self.modulation(cond).chunk(4, dim=-1) if self.modulation is not None and cond is not None else None
        h = self.norm1(x)
        if mods is not None:
            h = self._modulate(h, mods[0], mods[1])
        x = x + self.drop_path(self.attention(h, graph), graph.batch, graph.num_graphs)
        h = self.norm2(x)
        if mods is not None:
            h = self._modulate(h, mods[2], mods[3])
        return x + self.drop_path(self.ffn(h), graph.batch, graph.num_graphs)
