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

from sfm.data.lattice import as_cells, cart_to_frac, wrap_frac
from sfm.data.neighbor_list import SkinNeighborList
from sfm.data.structure import fixed_mask
from sfm.relax.fire import FIRE
from sfm.relax.lbfgs import LBFGS

OPTIMIZERS = {"fire": FIRE, "lbfgs": LBFGS}


@dataclass
class RelaxResult:
    """Per atom [N, ...] in the order of the input batch; per structure [B]."""

    pos: Tensor  # [N, 3] A, relaxed positions (dtype of batch.pos)
    energy: Tensor  # [B] eV at the relaxed positions
    forces: Tensor  # [N, 3] eV/A at the relaxed positions, as predicted (fixed atoms not zeroed)
    fmax: Tensor  # [B] eV/A, max |F| over free atoms at the relaxed positions
    converged: Tensor  # [B] bool, fmax < the requested fmax
    steps: Tensor  # [B] long, optimiser steps taken (ASE's nsteps); force calls = steps + 1


@dataclass
class RelaxFrame:
    """What the callback sees after each force call: only the structures still relaxing."""

    step: int  # optimiser steps taken so far (0 = the input positions)
    index: Tensor  # [b] long, index in the input batch of each active structure
    batch: Tensor  # [n] long, active structure (0..b-1) of each active atom
    pos: Tensor  # [n, 3]
    energy: Tensor  # [b]
    forces: Tensor  # [n, 3]
    fmax: Tensor  # [b]


def energy_forces_fn(model_or_fn) -> Callable[[Batch], tuple[Tensor, Tensor]]:
    """`fn(batch) -> (energy [B], forces [N, 3])` from a model with `.predict(batch) -> dict` or a fn.
    A model's fn also takes `edges` (the graph at these positions, see `skin_neighbor_list`)."""
    predict = getattr(model_or_fn, "predict", None)
    if predict is not None:

        def fn(batch, edges=None):
            out = predict(batch) if edges is None else predict(batch, edges=edges)
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


def skin_neighbor_list(model_or_fn, skin: float | None) -> SkinNeighborList | None:
    """A neighbour list with a skin that follows the model's own graph rule (cutoff, cap,
    periodicity), for a model whose ``predict`` takes ``edges`` (sfm's S2EF model); None for
    plain functions, or when ``skin`` is None."""
    backbone = getattr(model_or_fn, "backbone", None)
    if skin is None or backbone is None or not hasattr(model_or_fn, "predict"):
        return None
    pbc = getattr(model_or_fn, "pbc", (True, True, True))
    return SkinNeighborList(backbone.cfg.cutoff, backbone.cfg.max_neighbors, pbc, skin)


def evaluate(
    fn, parts: list[tuple[Batch, slice]], pos: Tensor, whole: Batch, neighbors: SkinNeighborList | None = None
) -> tuple[Tensor, Tensor]:
    """fn on each part at positions pos [N, 3] of the batch `whole`; energies [B] and forces
    [N, 3] joined. With `neighbors`, each part's graph comes from that list (model.predict(part,
    edges=...)), found on the whole batch and split by part (edges never cross structures)."""
    if neighbors is not None:
        cell = as_cells(whole.cell).to(pos.dtype)  # as the model reads it
        edge_index, offsets = neighbors(cart_to_frac(pos, cell[whole.batch]), cell, whole.batch)
    outs = []
    for part, atoms in parts:
        part.pos = pos[atoms]
        if "frac" in part:  # collate's wrapped fractional coordinates follow pos
            part.frac = wrap_frac(cart_to_frac(part.pos, part.cell[part.batch]))
        if neighbors is None:
            outs.append([t.detach() for t in fn(part)])
            continue
        start = atoms.start or 0
        mine = (edge_index[1] >= start) & (edge_index[1] < start + part.num_nodes)
        outs.append([t.detach() for t in fn(part, edges=(edge_index[:, mine] - start, offsets[mine]))])
    return torch.cat([e for e, _ in outs]), torch.cat([f for _, f in outs])


def relax_batch(
    model_or_fn,
    batch: Batch,
    optimizer: str = "fire",
    fmax: float = 0.05,
    steps: int = 300,
    callback: Callable[[RelaxFrame], None] | None = None,
    max_atoms: int | None = None,
    skin: float | None = 1.0,
    **optimizer_kwargs,
) -> RelaxResult:
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
    skin: for sfm's S2EF model, its graph comes from a neighbour list searched with this
        margin (A) and searched again only when an atom has moved more than skin / 2
        (`sfm.data.neighbor_list`): the same edges as the model's own search, found once per
        few steps instead of every step. None: the model searches every call.
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
    out = RelaxResult(
        pos=batch.pos.detach().clone(),
        energy=torch.zeros(B, dtype=dtype, device=device),
        forces=torch.zeros(N, 3, dtype=dtype, device=device),
        fmax=torch.zeros(B, dtype=dtype, device=device),
        converged=torch.zeros(B, dtype=torch.bool, device=device),
        steps=torch.zeros(B, dtype=torch.long, device=device),
    )
    sub = copy.copy(batch)  # shallow: setting sub.pos leaves the caller's batch alone
    parts = split_batch(sub, max_atoms)
    index = torch.arange(B, device=device)  # active structures, in input numbering
    atom_index = torch.arange(N, device=device)  # active atoms, in input numbering
    pos = batch.pos.detach().to(torch.float64)
    free = ~fixed_mask(batch)
    neighbors = skin_neighbor_list(model_or_fn, skin)
    nsteps = 0
    while True:
        sub.pos = pos.to(dtype)
        energy, forces = evaluate(fn, parts, sub.pos, sub, neighbors)
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
            if neighbors is not None:
                neighbors.keep(atoms_keep)
            sub = Batch.from_data_list(sub.index_select(keep.nonzero().flatten()))
            parts = split_batch(sub, max_atoms)
            index, atom_index = index[keep], atom_index[atoms_keep]
            pos, held, free = pos[atoms_keep], held[atoms_keep], free[atoms_keep]
        pos = opt.step(pos, held, sub.batch)
        nsteps += 1
