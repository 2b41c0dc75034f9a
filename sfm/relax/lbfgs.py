"""L-BFGS (Nocedal, Math. Comp. 35, 1980) for a batch of structures, step for step as ASE.

Each structure keeps its own curvature memory (pairs s = dx, y = dgradient, rho = 1/(y.s)),
and every dot product of the two-loop recursion is taken per structure. No line search:
like `ase.optimize.LBFGS` (memory 100, alpha 70 so H0 = 1/70, damping 1, maxstep 0.2 A)
the step is scaled so that its largest per-atom displacement is at most `maxstep`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from sfm.relax.fire import graph_sum


class LBFGS:
    """Batched L-BFGS state. `step(pos, forces, batch)` returns the new positions.

    pos, forces: [N, 3] (forces zero on fixed atoms); batch: [N] structure index in [0, B).
    All structures in the state step together, so they share the history length.
    """

    def __init__(self, num_graphs: int, maxstep=0.2, memory=100, alpha=70.0, damping=1.0):
        self.maxstep, self.memory, self.h0, self.damping = maxstep, memory, 1.0 / alpha, damping
        self.num_graphs = num_graphs
        self.s, self.y, self.rho = [], [], []  # [N, 3], [N, 3], [B] per remembered step
        self.pos0 = self.grad0 = None

    def step(self, pos: Tensor, forces: Tensor, batch: Tensor) -> Tensor:
        B, grad = self.num_graphs, -forces
        if self.pos0 is not None:
            s, y = pos - self.pos0, grad - self.grad0
            self.s.append(s)
            self.y.append(y)
            self.rho.append(1.0 / graph_sum(y * s, batch, B))
            if len(self.s) > self.memory:
                self.s.pop(0), self.y.pop(0), self.rho.pop(0)
        q, alphas = grad.clone(), []
        for s, y, rho in zip(reversed(self.s), reversed(self.y), reversed(self.rho)):
            a = rho * graph_sum(s * q, batch, B)
            q = q - a[batch, None] * y
            alphas.append(a)
        z = self.h0 * q
        for s, y, rho, a in zip(self.s, self.y, self.rho, reversed(alphas)):
            b = rho * graph_sum(y * z, batch, B)
            z = z + s * (a - b)[batch, None]
        dr = -z
        longest = scatter(dr.norm(dim=-1), batch, dim=0, dim_size=B, reduce="max")
        scale = torch.where(longest >= self.maxstep, self.maxstep / longest.clamp_min(1e-300), torch.ones_like(longest))
        self.pos0, self.grad0 = pos, grad
        return pos + dr * (scale * self.damping)[batch, None]

    def keep(self, atom_mask: Tensor, graph_mask: Tensor) -> None:
        self.num_graphs = int(graph_mask.sum())
        self.s = [s[atom_mask] for s in self.s]
        self.y = [y[atom_mask] for y in self.y]
        self.rho = [rho[graph_mask] for rho in self.rho]
        if self.pos0 is not None:
            self.pos0, self.grad0 = self.pos0[atom_mask], self.grad0[atom_mask]
