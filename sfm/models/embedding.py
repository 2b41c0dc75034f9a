"""Input embeddings: atoms (through the element dictionary) and the edge-degree embedding."""

from __future__ import annotations

import torch
from ase.data import chemical_symbols
from torch import nn

from sfm.models.graph import EdgeGraph
from sfm.models.radial import EdgeRadial
from sfm.models.so3 import SHLayout


class AtomTokens(nn.Module):
    """Maps atomic numbers ``Z [N]`` to dictionary tokens ``[N]`` (``sfm.data.Dictionary``).

    The ``Z -> token`` table is a buffer (saved with the model), so a checkpoint keeps
    its own element mapping even if ``dicts/`` changes later. Elements absent from the
    dictionary raise a ``KeyError`` naming them.
    """

    def __init__(self, tokens: list[str]):
        super().__init__()
        self.num_tokens = len(tokens)
        position = {tok: i for i, tok in enumerate(tokens)}
        table = torch.tensor([position.get(sym, -1) for sym in chemical_symbols], dtype=torch.long)
        self.register_buffer("z_to_token", table)

    def forward(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        z = atomic_numbers.long()
        if z.numel() and (z.min() < 1 or z.max() >= len(self.z_to_token)):
            raise KeyError(f"atomic numbers out of range 1..{len(self.z_to_token) - 1}: {z.unique().tolist()}")
        tokens = self.z_to_token[z]
        if (tokens < 0).any():
            missing = sorted({chemical_symbols[int(v)] for v in z[tokens < 0]})
            raise KeyError(f"elements {missing} are not in the model's dictionary")
        return tokens


class EdgeDegreeEmbedding(nn.Module):
    """Initial l>0 node features from the edges around each atom (EquiformerV2).

    Per edge, a radial MLP of (distance, elements) gives m=0 coefficients for every
    degree in the edge frame; rotated back to the global frame, weighted by the cutoff
    envelope and summed over the incoming edges, divided by the average degree.

    ``forward(graph) -> [N, dim, C]``.
    """

    def __init__(
        self, layout: SHLayout, channels: int, num_rbf: int, edge_channels: int, num_tokens: int, avg_degree: float
    ):
        super().__init__()
        self.n0, self.channels, self.avg_degree = layout.lmax + 1, channels, float(avg_degree)
        self.radial = EdgeRadial(num_rbf, num_tokens, edge_channels, self.n0 * channels)

    def forward(self, graph: EdgeGraph) -> torch.Tensor:
        m0 = self.radial(graph.rbf, graph.tokens[graph.src], graph.tokens[graph.dst])
        m0 = m0.view(-1, self.n0, self.channels) * graph.envelope[:, None, None].to(m0.dtype)
        # the first lmax+1 reduced rows are the m=0 coefficients (sfm.models.so3 layout)
        msg = torch.bmm(graph.wigner[:, : self.n0].transpose(1, 2).to(m0.dtype), m0)
        return graph.sum_at_targets(msg) / self.avg_degree
