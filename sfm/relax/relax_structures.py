"""Relax a list of structures in batches: what scoring and a judge run over many samples.

    relax_structures(model_or_fn, structures, RelaxSettings(...), desc="relax") -> list[dict]

Each structure is reduced to what a relaxation reads (:func:`relax_input`), batched with
:func:`sfm.data.collate` ``settings.batch_size`` at a time and relaxed with
:func:`sfm.relax.relax_batch` (fixed atoms held, the cell held).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch_geometric.data import Data
from tqdm import tqdm

from sfm.data import collate
from sfm.data.lattice import as_cell
from sfm.data.structure import fixed_mask
from sfm.relax.relax_batch import OPTIMIZERS, relax_batch


@dataclass(frozen=True)
class RelaxSettings:
    """How a list of structures is relaxed (``steps=0``: evaluated only, not moved)."""

    optimizer: str = "fire"
    fmax: float = 0.05  # eV/A, convergence on free atoms
    steps: int = 300  # optimiser step cap
    batch_size: int = 32  # structures relaxed together
    max_atoms: int | None = None  # atoms per model call (relax_batch), None: the whole batch
    device: str = "cpu"
    progress: bool = True


def add_relax_flags(parser) -> None:
    """``--optimizer --steps --fmax --batch_size`` on ``parser``, read back by :func:`relax_settings`
    (L-BFGS by default: the demo world's references)."""
    parser.add_argument(
        "--optimizer", choices=sorted(OPTIMIZERS), default="lbfgs", help="the demo world's references: lbfgs"
    )
    parser.add_argument("--steps", type=int, default=300, help="optimiser step cap")
    parser.add_argument("--fmax", type=float, default=0.05, help="eV/A, convergence on free atoms")
    parser.add_argument("--batch_size", type=int, default=32, help="structures relaxed together")


def relax_settings(args) -> RelaxSettings:
    """The :class:`RelaxSettings` of :func:`add_relax_flags`'s flags (progress unless ``--no_progress``)."""
    return RelaxSettings(
        optimizer=args.optimizer,
        fmax=args.fmax,
        steps=args.steps,
        batch_size=args.batch_size,
        progress=not getattr(args, "no_progress", False),
    )


def relax_input(d: Data, key: int, pos: torch.Tensor | None = None) -> Data:
    """What a relaxation reads of a structure (other stored fields stay out of the batch), at
    ``pos`` if given; ``sid`` = ``key``, unique per structure (EMTFn keeps one calculator per sid)."""
    return Data(
        pos=(d.pos if pos is None else pos).float().cpu(),
        cell=as_cell(d.cell)[None].float().cpu(),
        atomic_numbers=d.atomic_numbers.long().cpu(),
        natoms=int(d.natoms),
        tags=d.tags.long().cpu(),
        fixed=fixed_mask(d).cpu(),
        sid=key,
    )


def relax_structures(
    model_or_fn,
    structures: list[Data],
    settings: RelaxSettings,
    desc: str = "relax",
    pos: list[torch.Tensor] | None = None,
) -> list[dict]:
    """Relax ``structures`` (at ``pos`` where given) in batches; per structure a dict (CPU):
    ``pos`` [n, 3] A and ``force`` [n, 3] eV/A at the end, ``energy`` (eV, final),
    ``energy_initial`` (eV, at the start), ``fmax`` (eV/A, free atoms), ``converged``,
    ``relax_steps``."""
    out = []
    bar = tqdm(total=len(structures), desc=desc, unit="struct", disable=not settings.progress, mininterval=1.0)
    try:
        for start in range(0, len(structures), settings.batch_size):
            stop = min(start + settings.batch_size, len(structures))
            batch = collate(
                [relax_input(structures[i], i, None if pos is None else pos[i]) for i in range(start, stop)]
            )
            out += _relax_one_batch(model_or_fn, batch.to(settings.device), settings, bar)
            bar.update(stop - start)
    finally:
        bar.close()
    return out


def _relax_one_batch(model_or_fn, batch, settings: RelaxSettings, bar) -> list[dict]:
    initial = torch.zeros(batch.num_graphs, dtype=torch.float64)

    def record_start(frame):  # the energy before the first step, and progress
        if frame.step == 0:
            initial[frame.index.cpu()] = frame.energy.detach().double().cpu()
        if settings.progress and frame.step % 10 == 0:
            bar.set_postfix(step=frame.step, relaxing=len(frame.index), refresh=False)

    res = relax_batch(
        model_or_fn,
        batch,
        settings.optimizer,
        settings.fmax,
        settings.steps,
        callback=record_start,
        max_atoms=settings.max_atoms,
    )
    ptr = batch.ptr.cpu()
    out = []
    for b in range(batch.num_graphs):
        s = slice(int(ptr[b]), int(ptr[b + 1]))
        out.append(
            dict(
                pos=res.pos[s].detach().float().cpu(),
                force=res.forces[s].detach().float().cpu(),
                energy=float(res.energy[b]),
                energy_initial=float(initial[b]),
                fmax=float(res.fmax[b]),
                converged=bool(res.converged[b]),
                relax_steps=int(res.steps[b]),
            )
        )
    return out
