"""Baseline samplers, beside the model's (``samplers.py``): what generated structures are compared with.

- ``baseline_initial``: the input's ``pos`` and ``cell`` as they are (for inpainting: the
  heuristic placement the relaxation started from);
- ``baseline_random``: generated atoms at uniformly random fractional coordinates of the
  cell, given atoms and a given lattice held as in the model's modes; in ``csp`` the lattice
  is a random cell of a ``pool`` (e.g. the training split's), or else a draw from the
  lattice prior of a diffusion model.

Both return what the model's samplers give: ``(pos [N, 3] A, cell [B, 3, 3] A)``.
"""

from __future__ import annotations

import torch

from sfm.data.lattice import frac_to_cart
from sfm.models.diffusion.lattice_noise import canonical

BASELINES = ("baseline_initial", "baseline_random")


def random_lattices(num: int, model, pool: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """``[num, 3, 3]`` csp lattices of the random baseline: drawn from ``pool`` ``[P, 3, 3]`` or
    from ``model.lattice_process``'s prior."""
    if pool is not None:
        idx = torch.randint(len(pool), (num,), generator=generator, device=generator.device)
        return pool.to(generator.device)[idx]
    lat = model.lattice_process
    z = lat.prior(num, generator, torch.float32, generator.device)
    return canonical(lat.decode(z))


def sample_baseline(
    batch,
    name: str,
    mode: str,
    generator: torch.Generator,
    model=None,
    pool: torch.Tensor | None = None,
    atom_given: torch.Tensor | None = None,
):
    """``(pos [N, 3], cell [B, 3, 3])`` of baseline ``name`` for a collated ``batch`` in ``mode``
    (``csp``, ``lattice_given``, ``inpaint``; ``atom_given`` ``[N]`` bool: the inpainting's given atoms)."""
    if name not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {name!r}")
    if name == "baseline_initial":
        return batch.pos, batch.cell
    cell = random_lattices(batch.num_graphs, model, pool, generator) if mode == "csp" else batch.cell
    frac = torch.rand(batch.num_nodes, 3, generator=generator, device=batch.batch.device, dtype=cell.dtype)
    pos = frac_to_cart(frac, cell[batch.batch])
    if atom_given is not None:
        pos = torch.where(atom_given[:, None], batch.pos, pos)
    return pos, cell
