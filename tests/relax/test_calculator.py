"""SFMCalculator with the tiny S2EF model: runs under ASE FIRE, forces and stress are -dE/dx and
(1/V) dE/d(strain) by finite differences (conservative mode), checkpoint path accepted."""

import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.optimize import FIRE
from torch_geometric.data import Batch

from sfm.models import build_model
from sfm.pipeline.checkpoint import save_consolidated
from sfm.relax import SFMCalculator, atoms_to_data, relax_batch
from sfm.relax.bench import make_slabs


@pytest.fixture(scope="module")
def atoms():
    return make_slabs(1, seed=2)[0]  # 13-atom Cu slab with an adsorbate


def model(forces, dtype=torch.float32):
    torch.manual_seed(0)
    return build_model("tiny", head="s2ef", forces=forces).to(dtype)


def test_conservative_forces_and_stress_are_finite_differences(atoms):
    atoms = atoms.copy()
    atoms.set_constraint()  # compare the raw forces, fixed atoms included
    # move every atom: on the ideal lattice exact ties (k-nearest neighbours, edges on the
    # frame's seam) make the model's energy non-smooth, and finite differences meaningless
    atoms.rattle(0.05, seed=1)
    atoms.calc = SFMCalculator(model("conservative", torch.float64))
    forces, stress = atoms.get_forces(), atoms.get_stress()
    some = [0, 6, len(atoms) - 1]  # a subsurface, a surface and an adsorbate atom
    fd_forces = calculate_numerical_forces(atoms, eps=1e-4, iatoms=some)
    fd_stress = calculate_numerical_stress(atoms, eps=1e-4)
    assert np.abs(fd_forces).max() > 1e-5  # not trivially zero
    np.testing.assert_allclose(forces[some], fd_forces, atol=2e-3 * np.abs(fd_forces).max())
    np.testing.assert_allclose(stress, fd_stress, atol=2e-3 * np.abs(fd_stress).max())
    assert atoms.get_potential_energy() == atoms.calc.results["free_energy"]


def test_direct_model_under_ase_fire_matches_relax_batch(atoms):
    net = model("direct")
    atoms = atoms.copy()
    atoms.positions = atoms.positions.astype(np.float32)  # both paths start from the float32 batch.pos
    a = atoms.copy()
    a.calc = SFMCalculator(net)
    with pytest.raises(PropertyNotImplementedError):
        a.get_stress()
    opt = FIRE(a, logfile=None)
    opt.run(fmax=0.0, steps=5)  # fmax 0: exactly 5 steps
    fixed = np.array([c for c in a.constraints[0].get_indices()])
    np.testing.assert_array_equal(a.positions[fixed], atoms.positions[fixed])
    res = relax_batch(net, Batch.from_data_list([atoms_to_data(atoms)]), fmax=0.0, steps=5)
    assert res.steps.item() == opt.nsteps == 5
    np.testing.assert_allclose(res.pos.numpy(), a.positions, atol=1e-5)
    assert res.energy.item() == pytest.approx(a.get_potential_energy(), abs=1e-5)


def test_checkpoint_path(atoms, tmp_path):
    net = model("direct")
    save_consolidated(tmp_path / "model.pt", state_dict=net.state_dict(), build_kwargs=net.build_kwargs, meta={})
    a, b = atoms.copy(), atoms.copy()
    a.calc, b.calc = SFMCalculator(tmp_path / "model.pt"), SFMCalculator(net)
    np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-6)


@pytest.mark.parametrize("cell, rank", [(None, 0), ([[6.0, 0, 0], [0, 6, 0], [0, 0, 0]], 2)])
def test_a_cell_that_is_not_3d_is_refused_with_what_to_do(cell, rank):
    from ase.build import molecule

    atoms = molecule("CO")
    if cell is not None:
        atoms.set_cell(cell)
    atoms.calc = SFMCalculator(model("direct"))
    with pytest.raises(
        ValueError,
        match=rf"CO: sfm needs a 3-D periodic cell .* has {rank} nonzero vector\(s\).*"
        r"atoms\.center\(vacuum=10\)",
    ):
        atoms.get_potential_energy()
    atoms.center(vacuum=5.0)  # what the message says: now a usable box
    assert np.isfinite(atoms.get_potential_energy())
