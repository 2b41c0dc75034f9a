"""Edge-length features: Gaussian basis, smooth cutoff envelope, and the radial MLP.

All take distances ``d [E]`` in Angstrom.
"""

from __future__ import annotations

import torch
from torch import nn


class GaussianBasis(nn.Module):
    """``exp(-(d - mu_k)^2 / (2 sigma^2))`` for ``num`` centres ``mu_k`` evenly spaced on
    ``[0, cutoff]``, ``sigma = width * spacing`` (EquiformerV2: 600 centres, width 2).

    ``forward(d [E]) -> [E, num]``.
    """

    def __init__(self, cutoff: float, num: int = 600, width: float = 2.0):
        super().__init__()
        centres = torch.linspace(0.0, cutoff, num)
        sigma = width * cutoff / (num - 1)
        self.register_buffer("centres", centres, persistent=False)
        self.coeff = -0.5 / sigma**2

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.coeff * (d[:, None] - self.centres) ** 2)


class PolynomialEnvelope(nn.Module):
    """Smooth cutoff ``u(d / cutoff)``: 1 at 0, 0 beyond ``cutoff``, with zero first and
    second derivatives there (polynomial of degree p + 2, p = ``exponent``), so that
    energies stay twice differentiable as neighbours cross the cutoff.

    ``forward(d [E]) -> [E]``.
    """

    def __init__(self, cutoff: float, exponent: int = 5):
        super().__init__()
        self.cutoff = float(cutoff)
        self.p = int(exponent)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = (d / self.cutoff).clamp(max=1.0)
        poly = 1.0 - 0.5 * (p + 1) * (p + 2) * x**p + p * (p + 2) * x ** (p + 1) - 0.5 * p * (p + 1) * x ** (p + 2)
        return poly * (d < self.cutoff)


class EdgeRadial(nn.Module):
    """Per-edge MLP of (distance basis, source element, target element).

    ``Linear -> LayerNorm -> SiLU -> Linear -> LayerNorm -> SiLU -> Linear`` on the
    concatenation ``[rbf, emb_src, emb_tgt]`` (EquiformerV2's radial function with atom
    edge embedding). The element part of the first layer is applied to the embedding
    tables once and gathered per edge, which equals the concatenated form.

    ``forward(rbf [E, num_rbf], tok_src [E], tok_dst [E]) -> [E, out]``.
    """

    def __init__(self, num_rbf: int, num_tokens: int, hidden: int, out: int):
        super().__init__()
        self.num_rbf = num_rbf
        self.src_embedding = nn.Embedding(num_tokens, hidden)
        self.dst_embedding = nn.Embedding(num_tokens, hidden)
        self.lin1 = nn.Linear(num_rbf + 2 * hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.lin3 = nn.Linear(hidden, out)
        for emb in (self.src_embedding, self.dst_embedding):
            nn.init.uniform_(emb.weight, -0.001, 0.001)

    def forward(self, rbf: torch.Tensor, tok_src: torch.Tensor, tok_dst: torch.Tensor) -> torch.Tensor:
        w_rbf, w_src, w_dst = self.lin1.weight.split(
            [self.num_rbf, self.src_embedding.embedding_dim, self.dst_embedding.embedding_dim], dim=1
        )
        table_src = self.src_embedding.weight @ w_src.T  # [tokens, hidden]
        table_dst = self.dst_embedding.weight @ w_dst.T
        h = rbf @ w_rbf.T + self.lin1.bias + table_src[tok_src] + table_dst[tok_dst]
        h = nn.functional.silu(self.norm1(h))
        h = nn.functional.silu(self.norm2(self.lin2(h)))
        return self.lin3(h)
