"""Per-forward edge quantities shared by every block (computed once, not per layer)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class _Gather(torch.autograd.Function):
    """``x.index_select(0, index)`` whose backward is an ``index_add_`` into zeros.

    Autograd's own backward of ``index_select`` (and of ``x[index]``) scatters through an
    index expanded to the gradient's full shape: about 7x slower on CPU for edge features.
    The backward is written in differentiable ops, so double backward (forces by autograd
    in training) runs through it.
    """

    @staticmethod
    def forward(ctx, x, index):
        ctx.save_for_backward(index)
        ctx.num_rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.new_zeros((ctx.num_rows, *grad.shape[1:])).index_add(0, index, grad), None


@dataclass
class EdgeGraph:
    """The periodic radius graph of a batch and what the blocks need of it.

    ``src [E]`` neighbour j and ``dst [E]`` centre i (messages flow j -> i); ``offsets [E, 3]``
    integer image shifts of j (fractional, as from ``radius_graph_pbc``);
    ``vec [E, 3]`` = position of j's image minus position of i (A), differentiable wrt
    fractional coordinates and lattice; ``dist [E]``; ``rbf [E, num_rbf]`` distance basis;
    ``envelope [E]`` smooth cutoff weight; ``wigner [E, n_red, dim]`` rotation into each
    edge frame (:class:`sfm.models.so3.EdgeRotation`); ``tokens [N]`` dictionary index of
    each atom; ``batch [N]`` graph index; ``num_graphs`` B.
    """

    src: torch.Tensor
    dst: torch.Tensor
    offsets: torch.Tensor
    vec: torch.Tensor
    dist: torch.Tensor
    rbf: torch.Tensor
    envelope: torch.Tensor
    wigner: torch.Tensor
    tokens: torch.Tensor
    batch: torch.Tensor
    num_graphs: int

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[0]

    def gather_pair(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, ..., C] -> [E, ..., 2C]``: source and target features side by side."""
        return torch.cat([_Gather.apply(x, self.src), _Gather.apply(x, self.dst)], dim=-1)

    def sum_at_targets(self, msg: torch.Tensor) -> torch.Tensor:
        """``[E, ...] -> [N, ...]``: sum of incoming messages per centre atom."""
        out = msg.new_zeros((self.num_nodes, *msg.shape[1:]))
        return out.index_add_(0, self.dst, msg)
