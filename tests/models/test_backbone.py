"""Symmetries of the backbone (tiny preset): rotation, translation, permutation, periodic
image, cell choice, supercells, batching, and gradients to positions and lattice."""

import pytest
import torch
from e3nn import o3

from sfm.data.lattice import wrap_frac

ONE = torch.zeros(6, dtype=torch.long)  # batch vector of one 6-atom structure


def run(model, z, frac, lattice, batch=None, **kw):
    batch = torch.zeros(len(z), dtype=torch.long) if batch is None else batch
    return model(z, frac.to(lattice.dtype), lattice, batch, **kw)


def close(a, b, rel=1e-5):
    """Equal to float32 round-off, relative to the size of the features."""
    return (a - b).abs().max().item() <= rel * b.abs().max().item()


def wigner(rot, lmax):
    return o3.Irreps([(1, (l, 1)) for l in range(lmax + 1)]).D_from_matrix(rot)


@pytest.mark.parametrize("lmax,mmax,layers,res", [(2, 1, 2, 32), (6, 3, 1, 64)])
def test_rotation(eqv2_backbone, eqv2_cell, lmax, mmax, layers, res):
    """Invariants unchanged, every degree rotates with its Wigner-D (l=1 block: R @ v).

    The S2 activation is equivariant up to grid aliasing, so these use a fine grid
    (resolution 18, the published one, leaves errors of 1e-4..1e-1 at lmax 2..6).
    """
    small = dict(sphere_channels=8, attn_hidden_channels=8, ffn_hidden_channels=8, edge_channels=8) if lmax > 2 else {}
    model = eqv2_backbone(lmax=lmax, mmax=mmax, num_layers=layers, grid_resolution=res, **small)
    z, frac, lattice = eqv2_cell(1)
    x = run(model, z, frac, lattice)
    torch.manual_seed(3)
    rot = o3.rand_matrix()
    x_rot = run(model, z, frac, lattice @ rot.T)  # rows a, b, c rotated: cart -> cart @ rot.T
    assert close(model.scalars(x_rot), model.scalars(x))
    assert close(model.vectors(x_rot), torch.einsum("ab,nbc->nac", rot, model.vectors(x)))
    with torch.no_grad():
        torch.set_default_dtype(torch.float64)  # e3nn's D_from_matrix is float64 only then
        try:
            d = wigner(rot.double(), lmax).float()
        finally:
            torch.set_default_dtype(torch.float32)
    assert close(x_rot, torch.einsum("ij,njc->nic", d, x))


def test_l1_block_is_an_xyz_vector(eqv2_backbone):
    """Two atoms on the x axis: the l=1 features point along x (order x, y, z)."""
    model = eqv2_backbone(max_neighbors=None)
    lattice = torch.diag(torch.tensor([9.0, 30.0, 30.0]))[None]
    frac = torch.tensor([[0.0, 0.5, 0.5], [0.2, 0.5, 0.5]])
    v = model.vectors(run(model, torch.tensor([8, 29]), frac, lattice))
    assert v[:, 1:].abs().max() < 1e-5 * v[:, 0].abs().max()


def test_translation_and_periodic_image(eqv2_backbone, eqv2_cell):
    model = eqv2_backbone()
    z, frac, lattice = eqv2_cell(2)
    x = run(model, z, frac, lattice)
    shifted = wrap_frac(frac + torch.tensor([0.31, -0.57, 0.9]))
    assert close(run(model, z, shifted, lattice), x)
    unwrapped = frac + torch.randint(-3, 4, frac.shape, generator=torch.Generator().manual_seed(0))
    assert close(run(model, z, unwrapped, lattice), x)


def test_permutation(eqv2_backbone, eqv2_cell):
    model = eqv2_backbone()
    z, frac, lattice = eqv2_cell(3)
    perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))
    assert close(run(model, z[perm], frac[perm], lattice), run(model, z, frac, lattice)[perm])


@pytest.mark.parametrize("u", [[[1, 1, 0], [0, 1, 0], [0, 0, 1]], [[2, 1, 0], [1, 1, 0], [0, -1, 1]]])
def test_unimodular_change_of_cell(eqv2_backbone, eqv2_cell, u):
    """Same crystal, other basis L' = U L (det U = 1), frac' = frac U^-1: same features.

    No max_neighbors: which of two equidistant images of one atom it keeps depends on
    the basis.
    """
    model = eqv2_backbone(max_neighbors=None)
    z, frac, lattice = eqv2_cell(4)
    u = torch.tensor(u, dtype=torch.float32)
    assert torch.linalg.det(u).round() == 1
    new_frac = wrap_frac(frac @ torch.linalg.inv(u))
    assert close(run(model, z, new_frac, u @ lattice), run(model, z, frac, lattice))


def test_supercell_features_are_tiled(eqv2_backbone, eqv2_cell):
    model = eqv2_backbone(max_neighbors=None)
    z, frac, lattice = eqv2_cell(5)
    x = run(model, z, frac, lattice)
    images = torch.tensor([[i, j, 0] for i in range(2) for j in range(2)], dtype=torch.float32)
    size = torch.tensor([2.0, 2.0, 1.0])
    super_frac = ((frac[None] + images[:, None]) / size).reshape(-1, 3)
    x_super = run(model, z.repeat(4), super_frac, size[:, None] * lattice)
    assert close(x_super, x.repeat(4, 1, 1))


def test_batch_equals_one_at_a_time(eqv2_backbone, eqv2_cell):
    model = eqv2_backbone(cond_dim=4)
    for block in model.blocks:  # make the conditioning path do something
        torch.nn.init.normal_(block.modulation.weight, std=0.3)
    cells = [eqv2_cell(10 + i, n=n) for i, n in enumerate((3, 6, 5))]
    cond = torch.randn(3, 4)
    z = torch.cat([c[0] for c in cells])
    frac = torch.cat([c[1] for c in cells])
    lattice = torch.cat([c[2] for c in cells])
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([3, 6, 5]))
    x = run(model, z, frac, lattice, batch, cond=cond)
    singles = torch.cat([run(model, *c, cond=cond[i : i + 1]) for i, c in enumerate(cells)])
    assert close(x, singles)
    # per-atom conditioning equal to the per-graph one gives the same features
    assert close(run(model, z, frac, lattice, batch, cond=cond[batch]), x)
    assert not close(run(model, z, frac, lattice, batch, cond=-cond), x)


def test_gradients_reach_positions_and_lattice(eqv2_backbone):
    """Including a simple cubic cell, whose edges lie exactly along the axes and the pole."""
    model = eqv2_backbone()
    for lattice, frac in [
        (torch.eye(3)[None] * 2.8, torch.zeros(1, 3)),
        (torch.eye(3)[None] * 4.5 + 0.2, torch.rand(4, 3, generator=torch.Generator().manual_seed(0))),
    ]:
        frac, lattice = frac.requires_grad_(True), lattice.requires_grad_(True)
        x = run(model, torch.full((len(frac),), 29), frac, lattice)
        (x.pow(2).sum() + model.vectors(x).sum()).backward()
        assert torch.isfinite(frac.grad).all() and torch.isfinite(lattice.grad).all()
        assert lattice.grad.abs().sum() > 0 and (len(frac) == 1 or frac.grad.abs().sum() > 0)


def test_bf16_and_checkpointing_options(eqv2_backbone, eqv2_cell):
    z, frac, lattice = eqv2_cell(6)
    ref = eqv2_backbone()
    x = run(ref, z, frac, lattice)
    bf16 = eqv2_backbone(bf16=True)
    x_bf16 = run(bf16, z, frac, lattice)
    assert x_bf16.dtype == torch.float32 and (x_bf16 - x).abs().max() < 0.1 * x.abs().max()
    # activation checkpointing: same values and same gradients
    grads = []
    for flag in (False, True):
        model = eqv2_backbone(checkpoint=flag).train()
        lat = lattice.clone().requires_grad_(True)
        run(model, z, frac, lat).pow(2).sum().backward()
        grads.append((lat.grad, [p.grad for p in model.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads[0][1], grads[1][1]) if a is not None)
