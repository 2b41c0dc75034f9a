"""FIRE (Bitzek et al., PRL 97, 170201, 2006) for a batch of structures, step for step as ASE.

Each structure of the batch runs its own FIRE: its own velocity, time step `dt`, mixing `a`
and count of downhill steps, with the same update and the same defaults as
`ase.optimize.FIRE` (dt 0.1, maxstep 0.2 A, dtmax 1.0, Nmin 5, finc 1.1, fdec 0.5,
astart 0.1, fa 0.99, no downhill check). As in ASE, `maxstep` caps the norm of the whole
structure's displacement (all its atoms together), not each atom's.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import scatter


def graph_sum(x: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Sum per structure: x [N, 3] -> [B] (sum over the structure's atoms and xyz)."""
    return scatter(x.sum(-1), batch, dim=0, dim_size=num_graphs, reduce="sum")


class FIRE:
    """Batched FIRE state. `step(pos, forces, batch)` returns the new positions.

    pos, forces: [N, 3] (forces already zero on fixed atoms, as ASE's FixAtoms gives them);
    batch: [N] structure index in [0, B). `keep(atom_mask, graph_mask)` drops structures.
    """

    def __init__(
        self, num_graphs: int, dt=0.1, maxstep=0.2, dtmax=1.0, Nmin=5, finc=1.1, fdec=0.5, astart=0.1, fa=0.99, a=0.1
    ):
        self.num_graphs, self.dt0, self.a0 = num_graphs, dt, a
        self.maxstep, self.dtmax, self.Nmin = maxstep, dtmax, Nmin
        self.finc, self.fdec, self.astart, self.fa = finc, fdec, astart, fa
        self.vel = None  # [N, 3]; dt, a [B] float and nsteps [B] long are made with it

    def step(self, pos: Tensor, forces: Tensor, batch: Tensor) -> Tensor:
        B = self.num_graphs
        if self.vel is None:
            self.vel = torch.zeros_like(pos)
            self.dt = pos.new_full((B,), self.dt0)
            self.a = pos.new_full((B,), self.a0)
            self.nsteps = torch.zeros(B, dtype=torch.long, device=pos.device)
        else:
            vf = graph_sum(forces * self.vel, batch, B)
            f2 = graph_sum(forces * forces, batch, B).clamp_min(1e-300)
            v2 = graph_sum(self.vel * self.vel, batch, B)
            downhill = vf > 0.0
            mix = self.a * (v2 / f2).sqrt()
            mixed = (1.0 - self.a)[batch, None] * self.vel + mix[batch, None] * forces
            self.vel = torch.where(downhill[batch, None], mixed, torch.zeros_like(self.vel))
            grow = downhill & (self.nsteps > self.Nmin)
            self.dt = torch.where(grow, (self.dt * self.finc).clamp_max(self.dtmax), self.dt)
            self.a = torch.where(grow, self.a * self.fa, self.a)
            self.nsteps = torch.where(downhill, self.nsteps + 1, torch.zeros_like(self.nsteps))
            self.a = torch.where(downhill, self.a, torch.full_like(self.a, self.astart))
            self.dt = torch.where(downhill, self.dt, self.dt * self.fdec)
        self.vel = self.vel + self.dt[batch, None] * forces
        dr = self.dt[batch, None] * self.vel
        norm = graph_sum(dr * dr, batch, B).sqrt()
        scale = torch.where(norm > self.maxstep, self.maxstep / norm.clamp_min(1e-300), torch.ones_like(norm))
        return pos + dr * scale[batch, None]

    def keep(self, atom_mask: Tensor, graph_mask: Tensor) -> None:
        self.num_graphs = int(graph_mask.sum())
        if self.vel is not None:
            self.vel = self.vel[atom_mask]
            self.dt, self.a, self.nsteps = self.dt[graph_mask], self.a[graph_mask], self.nsteps[graph_mask]
