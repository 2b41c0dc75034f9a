"""Batched FIRE / L-BFGS against ASE's optimisers, with EMT as the (exact) energy model."""

import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from ase.optimize import FIRE, LBFGS
from torch_geometric.data import Batch

from sfm.relax import atoms_to_data, emt_fn, relax_batch
from sfm.relax.bench import make_slabs
from sfm.relax.relax_batch import split_batch

ASE_OPT = {"fire": FIRE, "lbfgs": LBFGS}


@pytest.fixture(scope="module")
def slabs():
    return make_slabs(5, seed=0)  # Cu/Pt/Au fcc111 + adsorbate, 13-37 atoms, perturbed


def to_batch(atoms_list, dtype=torch.float64):
    return Batch.from_data_list([atoms_to_data(a, dtype=dtype) for a in atoms_list])


def ase_relax(atoms, name, fmax=0.05, steps=300, **kwargs):
    atoms = atoms.copy()
    atoms.calc = EMT()
    opt = ASE_OPT[name](atoms, logfile=None, **kwargs)
    converged = opt.run(fmax=fmax, steps=steps)
    return atoms.get_potential_energy(), opt.nsteps, converged, atoms.get_positions()


@pytest.mark.parametrize("name,kwargs", [("fire", {}), ("lbfgs", {}), ("lbfgs", {"memory": 3, "maxstep": 0.1})])
def test_matches_ase_optimizer(slabs, name, kwargs):
    batch = to_batch(slabs)
    res = relax_batch(emt_fn, batch, optimizer=name, fmax=0.05, steps=300, **kwargs)
    for i, atoms in enumerate(slabs):
        energy, nsteps, converged, pos = ase_relax(atoms, name, **kwargs)
        assert abs(res.energy[i].item() - energy) / len(atoms) < 1e-3  # the 1 meV/atom bar
        assert abs(res.energy[i].item() - energy) < 1e-8  # in fact step for step the same
        assert res.steps[i].item() == nsteps and res.converged[i].item() == converged
        np.testing.assert_allclose(res.pos[batch.batch == i].numpy(), pos, atol=1e-8)
    assert res.converged.all() and (res.fmax < 0.05).all()


@pytest.mark.parametrize("name", ["fire", "lbfgs"])
def test_fixed_atoms_held_and_batch_equals_one_at_a_time(slabs, name):
    slabs = slabs[:3]  # 14, 19 and 28 atoms
    batch = to_batch(slabs, dtype=torch.float32)
    res = relax_batch(emt_fn, batch, optimizer=name)
    assert torch.equal(res.pos[batch.fixed], batch.pos[batch.fixed])
    assert (res.pos[~batch.fixed] - batch.pos[~batch.fixed]).abs().max() > 1e-2
    for i, atoms in enumerate(slabs):
        one = relax_batch(emt_fn, to_batch([atoms], dtype=torch.float32), optimizer=name)
        assert one.steps[0] == res.steps[i]
        torch.testing.assert_close(one.pos, res.pos[batch.batch == i], atol=1e-5, rtol=0)
        torch.testing.assert_close(one.energy[0], res.energy[i], atol=1e-4, rtol=0)


def test_step_cap_and_per_structure_stop(slabs):
    batch = to_batch(slabs)
    frames, calls = [], []

    def counting_fn(b):
        calls.append(b.num_graphs)
        return emt_fn(b)

    res = relax_batch(counting_fn, batch, steps=25, callback=frames.append)
    assert (res.steps <= 25).all()
    assert torch.equal(res.converged, res.fmax < 0.05)
    assert (res.steps[~res.converged] == 25).all()
    # each structure is evaluated steps + 1 times, then leaves the batch
    assert sum(calls) == int((res.steps + 1).sum())
    assert [f.step for f in frames] == list(range(len(frames)))
    assert frames[0].index.tolist() == list(range(len(slabs)))
    last = frames[-1]
    torch.testing.assert_close(last.energy, res.energy[last.index])
    assert torch.equal(last.pos, res.pos[torch.isin(batch.batch, last.index)])


def test_model_with_predict_and_input_untouched(slabs):
    class Model:
        def predict(self, b):
            energy, forces = emt_fn(b)
            return {"energy": energy, "forces": forces}

    batch = to_batch(slabs[:2])
    pos0 = batch.pos.clone()
    res = relax_batch(Model(), batch, optimizer="lbfgs", fmax=0.1)
    ref = relax_batch(emt_fn, batch, optimizer="lbfgs", fmax=0.1)
    assert torch.equal(batch.pos, pos0)
    assert torch.equal(res.pos, ref.pos)
    with pytest.raises(ValueError, match="optimizer"):
        relax_batch(emt_fn, batch, optimizer="bfgs")


def test_max_atoms_splits_calls_not_results(slabs):
    batch = to_batch(slabs)
    sizes = []

    def counting_fn(b):
        sizes.append(b.num_nodes)
        return emt_fn(b)

    res = relax_batch(counting_fn, batch, max_atoms=40, steps=20)
    ref = relax_batch(emt_fn, batch, steps=20)
    assert max(sizes) <= 40 and len(sizes) > 21
    for name in ("pos", "energy", "forces", "steps", "converged"):
        assert torch.equal(getattr(res, name), getattr(ref, name))
    parts = split_batch(batch, 1)  # each structure alone when none fits
    assert [p.num_graphs for p, _ in parts] == [1] * len(slabs)
    assert torch.equal(torch.cat([batch.pos[s] for _, s in parts]), batch.pos)


def test_s2ef_model_with_skin_list_equals_search_per_call_and_the_ase_loop(slabs, device, monkeypatch):
    """An S2EF model relaxes the same with its graph from a skin list as with a search per call,
    and as ASE's FIRE looping over SFMCalculator (float64: no round-off chaos over the steps)."""
    import importlib

    from sfm.models import build_model
    from sfm.relax.calculator import SFMCalculator

    rb = importlib.import_module("sfm.relax.relax_batch")  # the module (sfm.relax.relax_batch is the function)
    torch.manual_seed(0)
    model = build_model("tiny", head="s2ef").double().to(device).eval()
    model.normalizer.force_std.fill_(30.0)  # an untrained model's forces, scaled to move atoms ~0.1 A a step
    slabs = slabs[:3]
    batch = to_batch(slabs).to(device)
    lists = []
    make_list = rb.skin_neighbor_list
    monkeypatch.setattr(rb, "skin_neighbor_list", lambda m, s: lists.append(make_list(m, s)) or lists[-1])
    res = relax_batch(model, batch, fmax=0.05, steps=25, max_atoms=40)
    ref = relax_batch(model, batch, fmax=0.05, steps=25, max_atoms=40, skin=None)
    assert (res.pos - batch.pos).abs().max() > 0.3  # atoms moved past half the skin
    assert 1 < lists[0].searches < 25 and lists[1] is None
    assert torch.equal(res.steps, ref.steps)
    torch.testing.assert_close(res.energy, ref.energy, rtol=0, atol=1e-9)
    torch.testing.assert_close(res.pos, ref.pos, rtol=0, atol=1e-9)
    for i, atoms in enumerate(slabs):
        atoms = atoms.copy()
        atoms.calc = SFMCalculator(model, device=device)
        opt = FIRE(atoms, logfile=None)
        opt.run(fmax=0.05, steps=25)
        assert opt.nsteps == res.steps[i].item()
        assert abs(atoms.get_potential_energy() - res.energy[i].item()) / len(atoms) < 1e-6
