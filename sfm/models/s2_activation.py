"""Point-wise nonlinearities on the sphere: project coefficients to a grid, act, project back.

A pointwise function of a band-limited signal is not band-limited, so the projection
back is exact only up to aliasing: the activation is equivariant to within an error that
falls quickly with ``resolution`` (EquiformerV2 uses 18 x 18 points). Tests that need
round-off equivariance use a finer grid.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn
from torch.utils.checkpoint import checkpoint


def _chunk_columns(flat: torch.Tensor, grid_points: int, multiple: int = 1) -> int:
    """Columns per chunk so that one chunk of grid values stays in cache (CPU) or is large (GPU)."""
    budget = (1 << 26) if flat.is_cuda else (1 << 20)  # elements of [G, chunk]
    return max(multiple, budget // grid_points // multiple * multiple)


def _silu_grad(g: torch.Tensor) -> torch.Tensor:
    """silu'(g) in differentiable ops (aten's fused ``silu_backward`` has no derivative)."""
    s = torch.sigmoid(g)
    return s * (1 + g * (1 - s))


class _GridSiLU(torch.autograd.Function):
    """``from_grid @ silu(to_grid @ flat)`` for ``flat [n, K]``, in column chunks.

    Saves only ``flat``: the ``[G, K]`` grid values, the largest activations of the model,
    are recomputed chunk by chunk in the backward pass. Under ``create_graph`` (forces
    by autograd in training) the backward is written in differentiable ops instead.
    """

    @staticmethod
    def forward(ctx, flat, to_grid, from_grid):
        ctx.save_for_backward(flat, to_grid, from_grid)
        out = flat.new_empty(from_grid.shape[0], flat.shape[1])
        step = _chunk_columns(flat, to_grid.shape[0])
        for lo in range(0, flat.shape[1], step):
            values = nn.functional.silu(to_grid @ flat[:, lo : lo + step])
            torch.mm(from_grid, values, out=out[:, lo : lo + step])
        return out

    @staticmethod
    def backward(ctx, grad):
        flat, to_grid, from_grid = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward will run through this
            return to_grid.T @ (_silu_grad(to_grid @ flat) * (from_grid.T @ grad)), None, None
        out = torch.empty_like(flat)
        step = _chunk_columns(flat, to_grid.shape[0])
        for lo in range(0, flat.shape[1], step):
            cols = slice(lo, lo + step)
            # grad * silu'(x) in one fused kernel (the formula in elementwise ops takes six passes)
            values = torch.ops.aten.silu_backward(from_grid.T @ grad[:, cols], to_grid @ flat[:, cols])
            torch.mm(to_grid.T, values, out=out[:, cols])
        return out, None, None


class S2Grid(nn.Module):
    """Linear maps between SH coefficients and values on a ``resolution^2`` sphere grid.

    ``to_grid [G, n]`` and ``from_grid [n, G]`` act on the coefficient dimension of
    ``[M, n, C]`` tensors; ``from_grid @ to_grid = I``. ``coefficients`` (optional long
    index into the full e3nn layout) restricts both to a subset, e.g. the edge-frame
    reduced layout of :mod:`sfm.models.so3`. Built from e3nn's ``ToS2Grid``/``FromS2Grid``
    (integral normalisation; longitude ``alpha`` turns about the y pole).

    The grid values ``[G, M, C]`` are the largest tensors of the model (``M`` = edges in
    the attention). Without autograd, both methods work through them in cache-sized
    chunks; :meth:`silu` also does so with autograd, recomputing them in the backward
    pass. ``recompute``: :meth:`apply` under autograd keeps only its input and
    recomputes the grid values in the backward pass too (activation checkpointing).
    """

    def __init__(self, lmax: int, resolution: int, coefficients: torch.Tensor | None = None, recompute: bool = False):
        super().__init__()
        self.recompute = recompute
        if resolution % 2:
            raise ValueError(f"grid resolution must be even, got {resolution}")
        dim = (lmax + 1) ** 2
        res = (resolution, resolution)
        with torch.no_grad():
            to_grid = o3.ToS2Grid(lmax, res, normalization="integral", dtype=torch.float64)
            from_grid = o3.FromS2Grid(res, lmax, normalization="integral", dtype=torch.float64)
            to_mat = to_grid(torch.eye(dim, dtype=torch.float64)).reshape(dim, -1).T  # [G, dim]
            eye_grid = torch.eye(resolution * resolution, dtype=torch.float64).view(-1, *res)
            from_mat = from_grid(eye_grid).T  # [dim, G]
        if coefficients is not None:
            to_mat, from_mat = to_mat[:, coefficients], from_mat[coefficients]
        self.register_buffer("to_grid", to_mat.to(torch.get_default_dtype()).contiguous(), persistent=False)
        self.register_buffer("from_grid", from_mat.to(torch.get_default_dtype()).contiguous(), persistent=False)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        """SiLU on the grid: ``[M, n, C] -> [M, n, C]``."""
        m, n, c = x.shape
        flat = x.transpose(0, 1).reshape(n, m * c)  # one GEMM over all rows, not M small ones
        out = _GridSiLU.apply(flat, self.to_grid.to(x.dtype), self.from_grid.to(x.dtype))
        return out.view(n, m, c).transpose(0, 1)

    def apply(self, fn, x: torch.Tensor | None = None):
        """``fn`` applied point-wise on the grid: ``[M, n, C] -> [M, n, C']``.

        ``fn`` maps ``[G, k, C] -> [G, k, C']`` (acting on channels, same for all points).
        Called with ``fn`` alone it is ``nn.Module.apply(fn)``, which DeepSpeed (and
        ``model.apply(init_fn)``) call on every submodule.
        """
        if x is None:
            return super().apply(fn)
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(self._apply_on_grid, fn, x, use_reentrant=False)
        return self._apply_on_grid(fn, x)

    def _apply_on_grid(self, fn, x: torch.Tensor) -> torch.Tensor:
        m, n, c = x.shape
        flat = x.transpose(0, 1).reshape(n, m * c)
        to_grid = self.to_grid.to(x.dtype)
        if torch.is_grad_enabled():
            values = fn((to_grid @ flat).view(-1, m, c))
            out = self.from_grid.to(values.dtype) @ values.reshape(values.shape[0], -1)
        else:
            step = _chunk_columns(flat, to_grid.shape[0], multiple=c)
            chunks = []
            for lo in range(0, flat.shape[1], step):
                values = fn((to_grid @ flat[:, lo : lo + step]).view(to_grid.shape[0], -1, c))
                chunks.append(self.from_grid.to(values.dtype) @ values.reshape(values.shape[0], -1))
            out = torch.cat(chunks, dim=1)
        return out.view(n, m, -1).transpose(0, 1)


class SeparableS2Activation(nn.Module):
    """EquiformerV2's separable S2 activation.

    ``forward(scalars [M, C], x [M, n, C]) -> [M, n, C]``: the l=0 output is
    ``SiLU(scalars)`` (a separate invariant path), the l>0 outputs are those of
    ``SiLU`` applied on the grid to the whole signal ``x``. Coefficient 0 of ``x`` must be
    l=0 (true for both the full and the reduced layout).
    """

    def __init__(self, grid: S2Grid):
        super().__init__()
        self.grid = grid

    def forward(self, scalars: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        _, out = self.grid.silu(x).split([1, x.shape[1] - 1], dim=1)  # split: no zero-filled slice backward
        return torch.cat([nn.functional.silu(scalars)[:, None].to(out.dtype), out], dim=1)
