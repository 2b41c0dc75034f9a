"""EquiformerV2-style equivariant transformer on periodic graphs.

Reads as the architecture diagram::

    Z -> dictionary tokens -> embedding (l=0)   (frac, lattice) -> radius graph (PBC)
                     \\                               |
                      +---- edge-degree embedding <---+ distances, envelope, Wigner-D
                      |
               N x [norm -> SO(2) attention -> +, norm -> feed-forward -> +]  (+ cond)
                      |
                final norm -> x [N, (lmax+1)^2, C]

Node features follow :mod:`sfm.models.so3` (e3nn real SH, ``x[:, 1:4]`` an xyz vector).
References: EquiformerV2 (arXiv 2306.12059), eSCN (arXiv 2302.03655).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sfm.data.pbc_graph import edge_vectors, radius_graph_pbc
from sfm.models.attention import SO2GraphAttention
from sfm.models.block import TransformerBlock
from sfm.models.embedding import AtomTokens, EdgeDegreeEmbedding
from sfm.models.feed_forward import FeedForward
from sfm.models.graph import EdgeGraph
from sfm.models.layer_norm import EquivariantLayerNormSH
from sfm.models.radial import GaussianBasis, PolynomialEnvelope
from sfm.models.s2_activation import S2Grid
from sfm.models.so3 import EdgeRotation, sh_layout

OC20_AVG_DEGREE = 23.395238876342773  # EquiformerV2's rescaling of the edge-degree sum


@dataclass
class BackboneConfig:
    """Shape and options of :class:`EquiformerV2` (named presets: :mod:`sfm.models.presets`).

    Field names follow EquiformerV2's where they exist. ``dictionary``: path of the
    element dictionary, or its token list, or None for ``dicts/dict.txt``. ``cond_dim``: width
    of the optional conditioning input (0: none). ``bf16``: autocast the blocks to bfloat16.
    ``checkpoint``: recompute each block in the backward pass (activation checkpointing).
    ``recompute_grid``: recompute only the S2-grid values (the largest activations) in the
    backward pass.
    """

    num_layers: int = 2
    sphere_channels: int = 16
    lmax: int = 2
    mmax: int = 1
    num_heads: int = 2
    attn_hidden_channels: int = 16
    attn_alpha_channels: int = 8
    attn_value_channels: int = 8
    ffn_hidden_channels: int = 16
    edge_channels: int = 16
    num_rbf: int = 600
    rbf_width: float = 2.0
    cutoff: float = 6.0
    max_neighbors: int | None = 16
    envelope_exponent: int = 5
    grid_resolution: int = 18
    avg_degree: float = OC20_AVG_DEGREE
    alpha_drop: float = 0.0
    drop_path_rate: float = 0.0
    cond_dim: int = 0
    dictionary: str | list | None = None
    bf16: bool = False
    checkpoint: bool = False
    recompute_grid: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def load_tokens(dictionary) -> list[str]:
    """Token list of ``BackboneConfig.dictionary`` (a list, a path, or None: ``dicts/dict.txt``)."""
    if isinstance(dictionary, (list, tuple)):
        return list(dictionary)
    from sfm.data import Dictionary

    return list(Dictionary.load(dictionary).tokens)


class EquiformerV2(nn.Module):
    """The backbone. ``forward(atomic_numbers [N], frac [N, 3], lattice [B, 3, 3], batch [N],
    cond=None, pbc=(True, True, True)) -> x [N, (lmax+1)^2, C]``.

    ``cond`` is ``[B, cond_dim]`` (per structure) or ``[N, cond_dim]`` (per atom).
    ``encode`` returns ``(x, graph)`` for heads that need the edges too.
    """

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        self.layout = sh_layout(cfg.lmax, cfg.mmax)
        self.atom_tokens = AtomTokens(load_tokens(cfg.dictionary))
        num_tokens = self.atom_tokens.num_tokens
        self.embedding = nn.Embedding(num_tokens, cfg.sphere_channels)
        self.rbf = GaussianBasis(cfg.cutoff, cfg.num_rbf, cfg.rbf_width)
        self.envelope = PolynomialEnvelope(cfg.cutoff, cfg.envelope_exponent)
        self.rotation = EdgeRotation(cfg.lmax, cfg.mmax)
        # one grid per layout, shared by all blocks and heads (buffers, not parameters)
        self.grid_nodes = S2Grid(cfg.lmax, cfg.grid_resolution, recompute=cfg.recompute_grid)
        self.grid_edges = S2Grid(cfg.lmax, cfg.grid_resolution, self.layout.reduced, cfg.recompute_grid)
        self.edge_degree = EdgeDegreeEmbedding(
            self.layout, cfg.sphere_channels, cfg.num_rbf, cfg.edge_channels, num_tokens, cfg.avg_degree
        )
        self.blocks = nn.ModuleList(self.make_block() for _ in range(cfg.num_layers))
        self.norm = EquivariantLayerNormSH(cfg.lmax, cfg.sphere_channels)

    def make_attention(self, out_channels: int) -> SO2GraphAttention:
        """An attention layer of this backbone's shape (blocks, and direct-force heads)."""
        c = self.cfg
        return SO2GraphAttention(
            self.layout,
            c.sphere_channels,
            out_channels,
            c.attn_hidden_channels,
            c.num_heads,
            c.attn_alpha_channels,
            c.attn_value_channels,
            c.num_rbf,
            c.edge_channels,
            self.atom_tokens.num_tokens,
            self.grid_edges,
            c.alpha_drop,
        )

    def make_block(self) -> TransformerBlock:
        """A transformer block of this backbone's shape (the trunk's, and an energy branch's)."""
        c = self.cfg
        return TransformerBlock(
            self.make_attention(c.sphere_channels),
            self.make_feed_forward(c.sphere_channels),
            c.lmax,
            c.sphere_channels,
            c.cond_dim,
            c.drop_path_rate,
        )

    def make_feed_forward(self, out_channels: int) -> FeedForward:
        """A feed-forward layer of this backbone's shape."""
        c = self.cfg
        return FeedForward(c.sphere_channels, c.ffn_hidden_channels, out_channels, c.lmax, self.grid_nodes)

    def build_graph(self, atomic_numbers, frac, lattice, batch, pbc=(True, True, True), edges=None) -> EdgeGraph:
        """Radius graph (no grad) and the differentiable per-edge quantities.

        ``edges``: ``(edge_index [2, E], offsets [E, 3])`` already found for these ``frac``
        with this backbone's cutoff and cap (e.g. by :class:`~sfm.data.neighbor_list.SkinNeighborList`
        during a relaxation); ``None``: :func:`radius_graph_pbc` finds them.
        """
        if edges is None:
            edges = radius_graph_pbc(
                frac.detach(), lattice.detach(), batch, self.cfg.cutoff, self.cfg.max_neighbors, tuple(pbc)
            )
        edge_index, offsets = edges
        vec = edge_vectors(frac, lattice, batch, edge_index, offsets.to(frac.dtype))
        dist = torch.sqrt(vec.pow(2).sum(-1) + 1e-12)  # finite gradient for coincident atoms
        return EdgeGraph(
            src=edge_index[0],
            dst=edge_index[1],
            offsets=offsets,
            vec=vec,
            dist=dist,
            rbf=self.rbf(dist),
            envelope=self.envelope(dist),
            wigner=self.rotation(vec / dist[:, None]),
            tokens=self.atom_tokens(atomic_numbers),
            batch=batch,
            num_graphs=lattice.shape[0],
        )

    def encode(self, atomic_numbers, frac, lattice, batch, cond=None, pbc=(True, True, True), edges=None):
        """``-> (x [N, dim, C], graph)``; see the class docstring (``edges``: :meth:`build_graph`)."""
        x, graph, cond = self.embed(atomic_numbers, frac, lattice, batch, cond, pbc, edges)
        return self.norm(self.run(self.blocks, x, graph, cond)), graph

    def embed(self, atomic_numbers, frac, lattice, batch, cond=None, pbc=(True, True, True), edges=None):
        """The input of the first block: ``(x [N, dim, C], graph, cond [N, cond_dim] | None)``."""
        graph = self.build_graph(atomic_numbers, frac, lattice, batch, pbc, edges)
        scalars = self.embedding(graph.tokens)
        x = torch.cat([scalars[:, None], scalars.new_zeros(len(scalars), self.layout.dim - 1, scalars.shape[1])], 1)
        x = x + self.edge_degree(graph)
        if cond is not None:
            cond = nn.functional.silu(cond[batch] if cond.shape[0] == graph.num_graphs else cond)
        return x, graph, cond

    def run(self, blocks, x, graph, cond=None) -> torch.Tensor:
        """``x`` through ``blocks`` in turn (these or others of this shape), before the final norm."""
        autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if self.cfg.bf16 else contextlib.nullcontext()
        dtype = x.dtype
        with autocast:
            for block in blocks:
                if self.cfg.checkpoint and self.training and torch.is_grad_enabled():
                    x = checkpoint(block, x, graph, cond, use_reentrant=False)
                else:
                    x = block(x, graph, cond)
        return x.to(dtype)

    def forward(self, atomic_numbers, frac, lattice, batch, cond=None, pbc=(True, True, True)) -> torch.Tensor:
        return self.encode(atomic_numbers, frac, lattice, batch, cond, pbc)[0]

    @staticmethod
    def scalars(x: torch.Tensor) -> torch.Tensor:
        """Invariant per-atom features ``[N, C]`` (the l=0 coefficient)."""
        return x[:, 0]

    @staticmethod
    def vectors(x: torch.Tensor) -> torch.Tensor:
        """Per-atom l=1 features ``[N, 3, C]``, rotating like xyz vectors (``R @ v``)."""
        return x[:, 1:4]
