"""Relaxation benchmark: structures relaxed per second, batched `relax_batch` vs ASE FIRE looping.

    python -m sfm.relax.bench [--model tiny|small|emt|CKPT.pt] [--n 32 128] [--device cpu cuda]
                              [--data LMDB] [--steps 100] [--json out.json]

Both paths relax the same structures with the same FIRE (ASE parameters), fmax and step
cap, with the same model: `relax_batch` on one batch, and `ase.optimize.FIRE` with
`SFMCalculator` one structure at a time (with `--model emt`: EMT in both, which times the
optimiser overhead alone). Structures come from `--data` (an OC20 LMDB, e.g. the demo
world) or, by default, from `make_slabs`.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from ase.build import add_adsorbate, fcc111, molecule
from ase.constraints import FixAtoms

ADSORBATES = ["O", "H", "N", "CO", "OH"]
SIZES = [(2, 2, 3), (3, 2, 3), (3, 3, 3), (2, 3, 4)]


def make_slabs(n: int, seed: int = 0, sizes=SIZES, metals=("Cu", "Pt", "Au"), noise=0.1):
    """n demo-like adslabs: fcc111 slab of Cu/Pt/Au (cycled) with an adsorbate on a random
    site, OC20 tags (0 subsurface held by FixAtoms, 1 top two layers, 2 adsorbate) and
    free atoms displaced by N(0, noise^2) A per coordinate. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        size = sizes[i % len(sizes)]
        slab = fcc111(metals[i % len(metals)], size=size, vacuum=7.0, periodic=True)  # as OC20
        layer = slab.get_tags()  # 1 = top layer
        ads = ADSORBATES[rng.integers(len(ADSORBATES))]
        add_adsorbate(slab, molecule(ads) if len(ads) > 1 else ads, 1.8,
                      ["fcc", "hcp", "ontop", "bridge"][rng.integers(4)])
        tags = np.concatenate([np.where(layer <= 2, 1, 0), np.full(len(slab) - len(layer), 2)])
        slab.set_tags(tags)
        slab.set_constraint(FixAtoms(mask=tags == 0))
        slab.positions += rng.normal(scale=noise, size=slab.positions.shape) * (tags > 0)[:, None]
        out.append(slab)
    return out
