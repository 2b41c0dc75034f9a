"""Samplers on an analytic target (exact score): right distribution, masks held, determinism."""

import pytest
import torch
from analytic_diffusion import AnalyticModel
from torch_geometric.data import Batch, Data

from sfm.data import collate
from sfm.data.lattice import wrap_frac
from sfm.models.diffusion import wrapped_normal as wn
from sfm.models.diffusion.lattice_noise import upper_entries
from sfm.models.diffusion.samplers import sample

TAU = 0.03  # data spread per fractional axis
LAT_STD = 0.3  # data spread of the lattice latent


def make_model():
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(10, 3, generator=g)
    lat_mean = torch.tensor([[0.5, -0.3, 0.2], [-0.3, -1.0, 0.4], [0.2, 0.4, 1.2]])
    return AnalyticModel(centres, TAU, lat_mean, LAT_STD**2)


def move_to(batch, frac):
    """Put the batch's atoms at fractional ``frac`` [N, 3]: ``pos`` and ``frac`` together (the batch contract)."""
    batch.pos = (frac[:, None] @ batch.cell[batch.batch]).squeeze(1)
    batch.frac = wrap_frac(frac)


def make_batch(num, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(num):
        numbers = torch.tensor([1, 2, 3, 4])
        cell = torch.diag(torch.tensor([7.0, 8.0, 28.0])) + 0.5 * torch.randn(3, 3, generator=g)
        pos = torch.rand(4, 3, generator=g) @ cell
        items.append(
            Data(
                atomic_numbers=numbers,
                pos=pos,
                cell=cell[None],
                tags=torch.tensor([0, 1, 2, 2]),
                natoms=torch.tensor([4]),
                num_nodes=4,
            )
        )
    return collate(items)


def check_distribution(model, out, generated, tol_spread):
    mu = model.centres[out.atomic_numbers].float()
    d = wn.wrap_delta(out.frac - mu)[generated]
    assert d.abs().max() < 8 * TAU
    spread = d.std(0)
    assert ((spread / TAU - 1).abs() < tol_spread).all(), spread
    assert (d.mean(0).abs() < 0.2 * TAU).all()


def test_pc_sampler_recovers_target_and_lattice():
    model, batch = make_model(), make_batch(300)
    out = sample(model, batch, "csp", "pc", steps=100, generator=torch.Generator().manual_seed(1))
    assert model.calls == 200  # corrector + predictor per step
    assert out.frac.min() >= 0 and out.frac.max() < 1
    check_distribution(model, out, torch.ones(len(out.frac), dtype=torch.bool), 0.1)
    z = upper_entries(model.lattice_process.encode(out.cell))
    m = upper_entries(model.lat_mean[None].float())[0]
    assert ((z.mean(0) - m).abs() < 0.1).all()
    assert ((z.std(0) / LAT_STD - 1).abs() < 0.15).all()
    # canonical orientation: lower triangular
    assert torch.allclose(torch.triu(out.cell, 1), torch.zeros_like(out.cell), atol=1e-5)
    assert torch.allclose(out.pos, (out.frac[:, None] @ out.cell[out.batch]).squeeze(1), atol=1e-4)


@pytest.mark.parametrize("mode", ["csp", "inpaint"])
@pytest.mark.parametrize("churn", [0.0, 0.5])
def test_few_step_ode_hits_target_within_50_calls(mode, churn):
    model, batch = make_model(), make_batch(300)
    out = sample(model, batch, mode, "ode", steps=25, generator=torch.Generator().manual_seed(2), churn=churn)
    assert model.calls == 49
    generated = torch.ones(len(out.frac), dtype=torch.bool) if mode == "csp" else batch.tags == 2
    check_distribution(model, out, generated, 0.1)
    if mode == "csp":
        z = upper_entries(model.lattice_process.encode(out.cell))
        m = upper_entries(model.lat_mean[None].float())[0]
        assert ((z.mean(0) - m).abs() < 0.1).all()
        assert ((z.std(0) / LAT_STD - 1).abs() < 0.15).all()


@pytest.mark.parametrize("sampler", ["pc", "ode"])
def test_given_atoms_and_lattice_held_exactly(sampler):
    model, batch = make_model(), make_batch(6)
    for mode in ["lattice_given", "inpaint"]:
        out = sample(model, batch, mode, sampler, steps=10, generator=torch.Generator().manual_seed(3))
        assert torch.equal(out.cell, batch.cell)
        assert out.frac.min() >= 0 and out.frac.max() < 1
        if mode == "inpaint":
            given = batch.tags < 2
            assert torch.equal(out.pos[given], batch.pos[given])
            assert not torch.allclose(out.pos[~given], batch.pos[~given])
    explicit = torch.zeros(len(batch.pos), dtype=torch.bool)
    explicit[::3] = True
    out = sample(
        model, batch, "inpaint", sampler, steps=5, atom_given=explicit, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(out.pos[explicit], batch.pos[explicit])


@pytest.mark.parametrize("sampler", ["pc", "ode"])
def test_deterministic_for_a_seed(sampler):
    model, batch = make_model(), make_batch(4)
    runs = [
        sample(model, batch, "csp", sampler, steps=8, generator=torch.Generator().manual_seed(s)) for s in (5, 5, 6)
    ]
    assert torch.equal(runs[0].pos, runs[1].pos) and torch.equal(runs[0].cell, runs[1].cell)
    assert not torch.allclose(runs[0].pos, runs[2].pos)


def test_progress_callback_and_argument_checks():
    model, batch = make_model(), make_batch(2)
    seen = []
    sample(model, batch, "csp", "ode", steps=3, callback=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(ValueError, match="sampler must be"):
        sample(model, batch, "csp", "euler")
    with pytest.raises(ValueError, match="churn must be >= 0"):
        sample(model, batch, "csp", "pc", steps=3, churn=0.5)
    with pytest.raises(ValueError, match="it needs t_start < 1"):
        sample(model, batch, "csp", "ode", steps=3, renoise=False)
    with pytest.raises(ValueError, match="mode must be"):
        sample(model, batch, "bogus")
    nocell = Batch.from_data_list([Data(atomic_numbers=torch.tensor([1, 2]), num_nodes=2)])
    out = sample(model, nocell, "csp", "ode", steps=3)
    assert out.cell.shape == (1, 3, 3)
    with pytest.raises(ValueError, match="needs `cell`"):
        sample(model, nocell, "lattice_given", "ode", steps=3)


@pytest.mark.parametrize("sampler,steps", [("pc", 50), ("ode", 12)])
def test_refinement_from_the_input_keeps_data_distribution_and_stays_close(sampler, steps):
    """t_start < 1 (SDEdit): inputs drawn from the data come back distributed as the data,
    near where they started; given atoms and lattice held."""
    model, batch = make_model(), make_batch(300)
    g = torch.Generator().manual_seed(7)
    mu = model.centres[batch.atomic_numbers].float()
    frac_in = wn.sample(mu, torch.tensor(TAU), g)
    move_to(batch, frac_in)
    out = sample(model, batch, "inpaint", sampler, steps=steps, generator=g, t_start=0.3, corrector=0.0)
    free = batch.tags == 2
    check_distribution(model, out, free, 0.12)
    moved = wn.wrap_delta(out.frac - frac_in)[free]
    assert moved.std() < 0.8 * TAU  # correlated with its start, not a fresh draw (sqrt(2) TAU)
    assert torch.equal(out.pos[~free], batch.pos[~free]) and torch.equal(out.cell, batch.cell)
    with pytest.raises(ValueError, match="t_start"):
        sample(model, batch, "inpaint", sampler, steps=2, t_start=0.0)


def test_refinement_without_renoise_denoises_the_input_deterministically():
    """renoise=False: an input noised to level t_start (not by the sampler) is taken as the noisy
    state; the ODE brings it back to the data distribution, near its clean origin, the same
    for any generator."""
    model, batch = make_model(), make_batch(300)
    g = torch.Generator().manual_seed(8)
    t_start = 0.6
    x0 = wn.sample(model.centres[batch.atomic_numbers].float(), torch.tensor(TAU), g)
    sigma = model.frac_process.sigma(torch.full((batch.num_graphs,), t_start), batch.cell.norm(dim=-1))
    x_in = wn.sample(x0, sigma[batch.batch], g)
    move_to(batch, x_in)
    runs = [
        sample(
            model,
            batch,
            "inpaint",
            "ode",
            steps=12,
            generator=torch.Generator().manual_seed(s),
            t_start=t_start,
            renoise=False,
        )
        for s in (1, 2)
    ]
    assert torch.equal(runs[0].pos, runs[1].pos)
    free = batch.tags == 2
    check_distribution(model, runs[0], free, 0.12)
    before = wn.wrap_delta(x_in - x0)[free].norm(dim=-1).mean()
    after = wn.wrap_delta(runs[0].frac - x0)[free].norm(dim=-1).mean()
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("steps", [1, 10])
def test_ode_from_a_placement_follows_the_straight_path(steps):
    """The path placement training uses (model.py): with the exact score of a point mass at
    x0, the probability-flow ODE from x0 + delta at t_start ends at x0 + delta * sigma(0) /
    sigma(t_start), for any number of Heun steps (the path is what the ODE integrates)."""
    point = make_model()
    point.tau = 0.0  # data: every atom exactly at its centre
    batch = make_batch(6, seed=3)
    x0 = point.centres[batch.atomic_numbers].float()
    delta = 0.02 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    move_to(batch, wn.wrap_delta(x0 + delta))
    t_start = 0.55
    out = sample(point, batch, "inpaint", "ode", steps=steps, t_start=t_start, renoise=False)
    lengths = batch.cell.norm(dim=-1)
    ratio = point.frac_process.sigma(torch.zeros(6), lengths) / point.frac_process.sigma(
        torch.full((6,), t_start), lengths
    )
    free = batch.tags == 2
    expected = delta * ratio[batch.batch]
    assert torch.allclose(wn.wrap_delta(out.frac - x0)[free], expected[free], atol=1e-5)
