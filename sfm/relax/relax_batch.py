"""Relax many structures of different sizes at once: one model call per step for the whole batch.

Atomic positions only, the cell is held: OC20 slabs keep their cell (the vacuum along c and
the fixed subsurface make cell relaxation meaningless there), so there is no cell filter.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from sfm.data.lattice import cart_to_frac, wrap_frac
from sfm.data.structure import fixed_mask
from sfm.relax.fire import FIRE
from sfm.relax.lbfgs import LBFGS

OPTIMIZERS = {"fire": FIRE, "lbfgs": LBFGS}


@dataclass
class RelaxResult:
    """Per atom [N, ...] in the order of the input batch; per structure [B]."""

    pos: Tensor        # [N, 3] A, relaxed positions (dtype of batch.pos)
    energy: Tensor     # [B] eV at the relaxed positions
    forces: Tensor     # [N, 3] eV/A at the relaxed positions, as predicted (fixed atoms not zeroed)
    fmax: Tensor       # [B] eV/A, max |F| over free atoms at the relaxed positions
    converged: Tensor  # [B] bool, fmax < the requested fmax
    steps: Tensor      # [B] long, optimiser steps taken (ASE's nsteps); force calls = steps + 1


@dataclass
class RelaxFrame:
    """What the callback sees after each force call: only the structures still relaxing."""

    step: int          # optimiser steps taken so far (0 = the input positions)
    index: Tensor      # [b] long, index in the input batch of each active structure
    batch: Tensor      # [n] long, active structure (0..b-1) of each active atom
    pos: Tensor        # [n, 3]
    energy: Tensor     # [b]
    forces: Tensor     # [n, 3]
    fmax: Tensor       # [b]


def energy_forces_fn(model_or_fn) -> Callable[[Batch], tuple[Tensor, Tensor]]:
    """`fn(batch) -> (energy [B], forces [N, 3])` from a model with `.predict(batch) -> dict` or a fn."""
    predict = getattr(model_or_fn, "predict", None)
    if predict is not None:
        def fn(batch):
            out = predict(batch)
            return out["energy"], out["forces"]
        return fn
    if callable(model_or_fn):
        return model_or_fn
    raise TypeError(f"expected a callable or a model with .predict, got {type(model_or_fn).__name__}")


def split_batch(batch: Batch, max_atoms: int | None) -> list[tuple[Batch, slice]]:
    """[(part, atom slice)]: consecutive whole structures with at most `max_atoms` atoms per part
    (a larger structure goes alone); one part, the batch itself, when max_atoms is None."""
    if max_atoms is None:
        return [(batch, slice(None))]
    ptr = batch.ptr.tolist()
    bounds, start = [], 0
    for g in range(1, len(ptr) - 1):
        if ptr[g + 1] - ptr[start] > max_atoms:
            bounds.append((start, g))
            start = g
    bounds.append((start, len(ptr) - 1))
    return [(Batch.from_data_list(batch.index_select(range(a, b))), slice(ptr[a], ptr[b])) for a, b in bounds]


def evaluate(fn, parts: list[tuple[Batch, slice]], pos: Tensor) -> tuple[Tensor, Tensor]:
    """fn on each part at positions pos [N, 3] (whole batch); energies [B] and forces [N, 3] joined."""
    outs = []
    for part, atoms in parts:
        part.pos = pos[atoms]
        if "frac" in part:  # collate's wrapped fractional coordinates follow pos
            part.frac = wrap_frac(cart_to_frac(part.pos, part.cell[part.batch]))
        outs.append([t.detach() for t in fn(part)])
    return torch.cat([e for e, _ in outs]), torch.cat([f for _, f in outs])


def relax_batch(model_or_fn, batch: Batch, optimizer: str = "fire", fmax: float = 0.05,
                steps: int = 300, callback: Callable[[RelaxFrame], None] | None = None,
                max_atoms: int | None = None, **optimizer_kwargs) -> RelaxResult:
    """Relax the atoms of every structure of a PyG batch with a batched FIRE or L-BFGS (see
    fire.py, lbfgs.py); the cell is held (no cell relaxation: not needed for OC20 slabs).

    model_or_fn: `fn(batch) -> (energy [B] eV, forces [N, 3] eV/A)` or a model with
        `predict(batch) -> {"energy", "forces"}`; it is called on a batch holding only the
        structures still relaxing, with their current `pos` (dtype of the input).
    batch: `pos` [N, 3] A, `cell` [B, 3, 3] (rows a, b, c; held), `batch` [N], `fixed` [N] bool
        (held atoms; else tags == 0), plus whatever the model reads (atomic_numbers, ...).
    max_atoms: call fn on parts of at most this many atoms (whole structures) instead of on
        all active structures at once: bounds memory, and on CPU (where a model's cost is
        linear in atoms and large activations fall out of cache) it is also faster.
    Converged: max |F| over free atoms < fmax (as ASE). A structure stops on convergence or
    after `steps` optimiser steps and then leaves the batch: it costs no more model calls.
    Optimiser state is float64, but fn sees positions in batch.pos's dtype: float32 runs drift
    apart from float64 ones over hundreds of steps (FIRE is chaotic on flat surfaces), so
    compare with ASE in float64. `optimizer_kwargs` go to FIRE / LBFGS (ASE names: maxstep, dt...).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    fn = energy_forces_fn(model_or_fn)
    B, N, dtype, device = batch.num_graphs, batch.pos.shape[0], batch.pos.dtype, batch.pos.device
    opt = OPTIMIZERS[optimizer](B, **optimizer_kwargs)
    out = RelaxResult(pos=batch.pos.detach().clone(), energy=torch.zeros(B, dtype=dtype, device=device),
                      forces=torch.zeros(N, 3, dtype=dtype, device=device),
                      fmax=torch.zeros(B, dtype=dtype, device=device),
                      converged=torch.zeros(B, dtype=torch.bool, device=device),
                      steps=torch.zeros(B, dtype=torch.long, device=device))
    sub = copy.copy(batch)  # shallow: setting sub.pos leaves the caller's batch alone
    parts = split_batch(sub, max_atoms)
    index = torch.arange(B, device=device)       # active structures, in input numbering
    atom_index = torch.arange(N, device=device)  # active atoms, in input numbering
    pos = batch.pos.detach().to(torch.float64)
    free = ~fixed_mask(batch)
    nsteps = 0
    while True:
        sub.pos = pos.to(dtype)
        energy, forces = evaluate(fn, parts, sub.pos)
        held = torch.where(free[:, None], forces.to(torch.float64), torch.zeros_like(pos))
        fm = scatter(held.norm(dim=-1), sub.batch, dim=0, dim_size=len(index), reduce="max")
        if callback is not None:
            callback(RelaxFrame(nsteps, index, sub.batch, sub.pos, energy, forces, fm))
        done = (fm < fmax) | (nsteps >= steps)
        if done.any():
            atoms_done = done[sub.batch]
            out.pos[atom_index[atoms_done]] = sub.pos[atoms_done]
            out.forces[atom_index[atoms_done]] = forces[atoms_done].to(dtype)
            out.energy[index[done]] = energy[done].to(dtype)
            out.fmax[index[done]] = fm[done].to(dtype)
            out.converged[index[done]] = fm[done] < fmax
            out.steps[index[done]] = nsteps
            if done.all():
                return out
            keep, atoms_keep = ~done, ~atoms_done
            opt.keep(atoms_keep, keep)
            sub = Batch.from_data_list(sub.index_select(keep.nonzero().flatten()))
            parts = split_batch(sub, max_atoms)
            index, atom_index = index[keep], atom_index[atoms_keep]
            pos, held, free = pos[atoms_keep], held[atoms_keep], free[atoms_keep]
        pos = opt.step(pos, held, sub.batch)
        nsteps += 1
