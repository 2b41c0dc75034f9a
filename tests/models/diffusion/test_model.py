"""DiffusionModel: symmetry contract (random tiny model), masks, loss, rebuild, overfitting."""

import pytest
import torch
from e3nn import o3

from sfm.data import collate
from sfm.data.lattice import wrap_frac
from sfm.models import build_model
from sfm.models.diffusion.masks import Masks, mode_masks


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("tiny", head="diffusion").eval()
    with torch.no_grad():  # non-zero conditioning paths, so the masks and time matter
        for block in m.backbone.blocks:
            block.modulation.weight.normal_(0, 0.1)
    return m


@pytest.fixture
def batch(make_structure):
    return collate([make_structure(1, natoms=10), make_structure(2, natoms=7)])


def inputs(batch, mode="inpaint"):
    masks = mode_masks(batch, mode)
    t = torch.tensor([0.3, 0.7])
    sigma = torch.tensor([[0.05, 0.04, 0.02], [0.3, 0.2, 0.1]])
    return batch.atomic_numbers.long(), batch.frac, batch.cell, batch.batch, t, sigma, masks


def rel_close(a, b, rel=1e-4):
    return (a - b).abs().max().item() <= rel * max(b.abs().max().item(), 1e-6)


def with_collate_fields(batch):
    from sfm.data.lattice import cart_to_frac

    batch.frac = wrap_frac(cart_to_frac(batch.pos, batch.cell[batch.batch]))
    return batch


def test_rotation_frac_scores_invariant_lattice_noise_rotates(model, batch):
    z, frac, cell, index, t, sigma, masks = inputs(with_collate_fields(batch))
    torch.manual_seed(5)
    rot = o3.rand_matrix()
    with torch.no_grad():
        out = model(z, frac, cell, index, t, sigma, masks)
        out_rot = model(z, frac, cell @ rot.T, index, t, sigma, masks)  # rows rotated: cart -> cart @ rot.T
    assert rel_close(out_rot["coord"], out["coord"])
    assert rel_close(out_rot["lattice_eps"], out["lattice_eps"])
    assert rel_close(out_rot["lattice_tensor"], rot @ out["lattice_tensor"] @ rot.T)
    assert rel_close(out_rot["lattice_noise"], out["lattice_noise"] @ rot.T)
    # eps is symmetric (the latent is) and not trivially zero
    assert torch.allclose(out["lattice_eps"], out["lattice_eps"].transpose(-1, -2), atol=1e-6)
    assert out["coord"].abs().max() > 1e-3 and out["lattice_eps"].abs().max() > 1e-3


def test_permutation_and_translation(model, batch):
    z, frac, cell, index, t, sigma, masks = inputs(with_collate_fields(batch))
    with torch.no_grad():
        out = model(z, frac, cell, index, t, sigma, masks)
        # permute atoms within each structure (the batch vector stays sorted)
        perm = torch.cat([torch.randperm(10, generator=torch.Generator().manual_seed(1)), 10 + torch.randperm(7)])
        out_p = model(
            z[perm],
            frac[perm],
            cell,
            index,
            t,
            sigma,
            Masks(masks.atom_given[perm], masks.lattice_given, masks.tags[perm]),
        )
        assert rel_close(out_p["coord"], out["coord"][perm])
        assert rel_close(out_p["lattice_eps"], out["lattice_eps"])
        # a common shift of every fractional coordinate of a structure changes nothing
        shift = torch.tensor([[0.31, -0.57, 0.9], [0.1, 0.2, -0.45]])[index]
        out_s = model(z, wrap_frac(frac + shift), cell, index, t, sigma, masks)
    assert rel_close(out_s["coord"], out["coord"])
    assert rel_close(out_s["lattice_eps"], out["lattice_eps"])


def test_mask_channel_tags_and_time_reach_the_network(model, batch):
    z, frac, cell, index, t, sigma, masks = inputs(with_collate_fields(batch))
    with torch.no_grad():
        out = model(z, frac, cell, index, t, sigma, masks)
        flipped = Masks(~masks.atom_given, masks.lattice_given, masks.tags)
        assert not rel_close(model(z, frac, cell, index, t, sigma, flipped)["coord"], out["coord"], 1e-3)
        hidden = Masks(masks.atom_given, masks.lattice_given, torch.full_like(masks.tags, -1))
        assert not rel_close(model(z, frac, cell, index, t, sigma, hidden)["coord"], out["coord"], 1e-3)
        assert not rel_close(model(z, frac, cell, index, t + 0.1, sigma, masks)["coord"], out["coord"], 1e-3)


def test_loss_parts_backward_and_targets(batch):
    torch.manual_seed(0)
    m = build_model("tiny", head="diffusion", mode_probs="csp=1")
    loss, parts = m.loss(batch)
    assert set(parts) == {"coord", "lattice", "loss"}
    assert torch.isfinite(loss) and parts["lattice"] > 0
    loss.backward()
    grads = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("coord_head") for n in grads) and any(n.startswith("lattice_mlp") for n in grads)
    # lattice-given only: no lattice loss, the lattice head still in the graph (DDP-safe)
    m2 = build_model("tiny", head="diffusion", mode_probs={"lattice_given": 1.0})
    loss2, parts2 = m2.loss(batch)
    assert parts2["lattice"] == 0
    loss2.backward()
    assert all(p.grad is not None for n, p in m2.named_parameters() if n.startswith("lattice_mlp"))
    del batch.pos_relaxed
    with pytest.raises(ValueError, match="pos_relaxed"):
        m2.loss(batch)
    build_model("tiny", head="diffusion", target="pos").loss(batch)


def test_placement_training_starts_from_the_initial_placement(batch):
    """placement_prob=1: generated atoms enter on the straight path from their initial pos (at
    placement_t) to pos_relaxed (at 0), with the exact score toward pos_relaxed as target;
    placement_prob=0: Gaussian states."""
    from sfm.data.lattice import cart_to_frac
    from sfm.models.diffusion import wrapped_normal

    batch.tags = torch.cat([torch.tensor([0, 1, 1, 2, 2, 0, 1, 2, 1, 1]), torch.tensor([0, 1, 2, 2, 1, 0, 1])])
    cell = batch.cell.reshape(-1, 3, 3)
    x_init = wrap_frac(cart_to_frac(batch.pos, cell[batch.batch]))
    x_relaxed = wrap_frac(cart_to_frac(batch.pos_relaxed, cell[batch.batch]))
    free = batch.tags == 2
    for prob in (1.0, 0.0):
        torch.manual_seed(0)
        m = build_model(
            "tiny",
            head="diffusion",
            mode_probs="inpaint=1",
            tag_dropout=0.0,
            placement_prob=prob,
            placement_t=0.4,
            num_layers=1,
        )
        m.fit_normalizer([batch])
        seen = {}
        forward = m.forward

        def spy(numbers, frac, lattice, index, t, sigma, masks, latent=None):
            out = forward(numbers, frac, lattice, index, t, sigma, masks, latent)
            seen.update(frac=frac, t=t, sigma=sigma, coord=out["coord"].detach(), given=masks.atom_given)
            return out

        m.forward = spy
        loss, parts = m.loss(batch)
        assert torch.equal(seen["given"], ~free)
        if prob == 1.0:
            assert (seen["t"] <= 0.4).all()
            lengths = m.frac_process.axis_lengths(cell, torch.ones(2, dtype=torch.bool))
            ratio = (seen["sigma"] / m.frac_process.sigma(torch.full((2,), 0.4), lengths))[batch.batch]
            assert ((ratio > 0) & (ratio <= 1)).all()
            delta = wrapped_normal.wrap_delta(x_init - x_relaxed)
            assert torch.allclose(
                wrapped_normal.wrap_delta(seen["frac"] - x_relaxed)[free], (ratio * delta)[free], atol=1e-5
            )
            sigma = seen["sigma"][batch.batch][free]
            target = wrapped_normal.score(seen["frac"][free], x_relaxed[free], sigma) / wrapped_normal.score_norm(sigma)
            assert torch.allclose(parts["coord"], ((seen["coord"][free] - target) ** 2).mean(), rtol=1e-4)
        else:
            assert (seen["frac"][free] - x_init[free]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="target='pos_relaxed'"):
        build_model("tiny", head="diffusion", target="pos", placement_prob=0.5)
    with pytest.raises(ValueError, match="placement_prob"):
        build_model("tiny", head="diffusion", placement_prob=1.5)


def test_build_kwargs_rebuild_and_normalisers_in_state_dict(batch):
    m = build_model("tiny", head="diffusion", mode_probs="csp=0.5,inpaint=0.5", sigma_min=0.02, num_layers=1)
    fitted = m.fit_normalizer([batch])
    assert fitted["num_structures"] == 2
    again = build_model(**m.build_kwargs)
    missing = again.load_state_dict(m.state_dict(), strict=True)
    assert not missing.missing_keys
    assert torch.equal(again.lattice_process.mean, m.lattice_process.mean)
    assert torch.equal(again.frac_process.ref_lengths, m.frac_process.ref_lengths)
    assert again.frac_process.sigma_min == 0.02 and again.mode_probs["lattice_given"] == 0.0
    with pytest.raises(ValueError, match="unknown modes"):
        build_model("tiny", head="diffusion", mode_probs="cps=1")


def test_sampling_with_the_network_holds_masks(model, batch, device):
    batch = with_collate_fields(batch).to(device)
    model.to(device)
    try:
        out = model.sample(batch, "inpaint", "ode", steps=2, generator=torch.Generator(device).manual_seed(0))
    finally:
        model.cpu()  # the module-scoped model stays on the CPU for the other tests
    given = mode_masks(batch, "inpaint").atom_given
    assert torch.equal(out.pos[given], batch.pos[given]) and torch.equal(out.cell, batch.cell)
    assert out.frac.min() >= 0 and out.frac.max() < 1
    assert not model.training


def test_forward_takes_the_lattice_state_as_it_is(model, batch):
    """The latent handed in (the process state Z) is what conditions the network: handing the
    encoding of the lattice is bit for bit the default path, and handing Z for decode(Z) (what
    training and the samplers do, no encode round trip) differs by round-off only."""
    from sfm.models.diffusion.lattice_noise import sym_noise

    numbers, frac, cell, index, t, sigma, masks = inputs(batch, "csp")
    lat = model.lattice_process
    z = lat.encode(cell) + 0.5 * sym_noise(2, torch.Generator().manual_seed(3))
    noisy = lat.decode(z)
    with torch.no_grad():
        default = model(numbers, frac, noisy, index, t, sigma, masks)
        encoded = model(numbers, frac, noisy, index, t, sigma, masks, latent=lat.encode(noisy))
        state = model(numbers, frac, noisy, index, t, sigma, masks, latent=z)
    for key in ("coord", "lattice_eps", "lattice_noise"):
        assert torch.equal(default[key], encoded[key])
        assert rel_close(state[key], default[key], rel=1e-4)
