"""relax_batch on demo-world systems (initial placements built as sfm.data.demo builds `pos`)
against ASE FIRE, both with EMT: relaxed energies within 1 meV/atom, fixed atoms held."""

import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from ase.optimize import FIRE
from torch_geometric.data import Batch

from sfm.data import demo
from sfm.relax import EMTFn, atoms_to_data, relax_batch


def demo_systems(n, seed=0):
    """n demo initial placements: random in-distribution catalyst slab and adsorbate."""
    rng = np.random.default_rng(seed)
    catalysts, adsorbates = demo.catalysts()[0], demo.load_adsorbates()
    out = []
    while len(out) < n:
        slab, _ = demo.build_slab(rng, catalysts[rng.integers(len(catalysts))])
        site, _ = demo.surface_sites(slab, rng)
        try:
            out.append(demo.place_adsorbate(slab, adsorbates[rng.integers(len(adsorbates))], site, rng))
        except demo.Rejected:
            continue
    return out


@pytest.fixture(scope="module")
def systems():
    return demo_systems(3, seed=4)


def test_demo_systems_match_ase_fire(systems):
    batch = Batch.from_data_list([atoms_to_data(a, dtype=torch.float64, sid=i) for i, a in enumerate(systems)])
    res = relax_batch(EMTFn(), batch, optimizer="fire", fmax=0.05, steps=300)
    assert torch.equal(res.pos[batch.fixed], batch.pos[batch.fixed])
    for i, atoms in enumerate(systems):
        atoms = atoms.copy()
        atoms.calc = EMT()
        opt = FIRE(atoms, logfile=None)
        converged = opt.run(fmax=0.05, steps=300)
        assert abs(res.energy[i].item() - atoms.get_potential_energy()) / len(atoms) < 1e-3
        assert res.converged[i].item() == converged and res.steps[i].item() == opt.nsteps
