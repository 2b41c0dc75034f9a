"""Building blocks of the backbone, each against its defining property."""

import math

import pytest
import torch
from e3nn import o3

from sfm.models.attention import edge_softmax
from sfm.models.block import GraphDropPath
from sfm.models.embedding import AtomTokens
from sfm.models.layer_norm import EquivariantLayerNormSH
from sfm.models.radial import EdgeRadial, GaussianBasis, PolynomialEnvelope
from sfm.models.s2_activation import S2Grid, SeparableS2Activation
from sfm.models.so2_conv import SO2Convolution
from sfm.models.so3 import sh_layout
from sfm.models.so3_linear import SO3Linear


def wigner(rot, lmax):
    return o3.Irreps([(1, (l, 1)) for l in range(lmax + 1)]).D_from_matrix(rot)


def rotate(x, d):
    """Apply block-diagonal D [dim, dim] to features [..., dim, C]."""
    return torch.einsum("ij,...jc->...ic", d, x)


@pytest.mark.parametrize("lmax,mmax", [(2, 1), (3, 3), (4, 2)])
def test_so2_convolution_commutes_with_turns_about_the_edge(lmax, mmax):
    torch.manual_seed(0)
    layout = sh_layout(lmax, mmax)
    conv = SO2Convolution(layout, 3, 5, extra_channels=4)
    x = torch.randn(7, layout.n_reduced, 3)
    radial = torch.randn(7, layout.n_half * 3)
    angle = torch.tensor(0.83)
    turn = wigner(o3.matrix_y(angle), lmax)[layout.reduced][:, layout.reduced]  # about the pole
    y, extra = conv(x, radial)
    y_turned, extra_turned = conv(rotate(x, turn), radial)
    assert torch.allclose(y_turned, rotate(y, turn), atol=1e-5)
    assert torch.allclose(extra_turned, extra, atol=1e-5)  # invariant outputs


def test_s2_grid_round_trip_and_activation_equivariance():
    lmax = 3
    grid = S2Grid(lmax, 18)
    dim = (lmax + 1) ** 2
    assert torch.allclose(grid.from_grid @ grid.to_grid, torch.eye(dim), atol=1e-5)
    layout = sh_layout(lmax, 1)
    reduced = S2Grid(lmax, 18, layout.reduced)
    assert reduced.to_grid.shape == (18 * 18, layout.n_reduced)
    # aliasing falls with resolution: a fine grid is equivariant to round-off
    torch.manual_seed(0)
    x = torch.randn(4, dim, 6, dtype=torch.float64) / math.sqrt(dim)
    scalars = torch.randn(4, 6, dtype=torch.float64)
    errors = {}
    torch.set_default_dtype(torch.float64)  # e3nn's D_from_matrix is float64 only then
    try:
        d = wigner(o3.rand_matrix(), lmax)
        for res in (18, 64):
            act = SeparableS2Activation(S2Grid(lmax, res))
            errors[res] = (act(scalars, rotate(x, d)) - rotate(act(scalars, x), d)).abs().max().item()
    finally:
        torch.set_default_dtype(torch.float32)
    assert errors[64] < 1e-10 < errors[18] < 1e-3
    with pytest.raises(ValueError):
        S2Grid(2, 17)


def test_grid_silu_gradients_first_and_second_order():
    """The chunked, recomputing grid SiLU equals plain autograd, including double backward
    (conservative forces in training)."""
    torch.set_default_dtype(torch.float64)
    try:
        grid = S2Grid(2, 6, sh_layout(2, 1).reduced)
    finally:
        torch.set_default_dtype(torch.float32)
    x = torch.randn(3, grid.to_grid.shape[1], 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(grid.silu, (x,))
    assert torch.autograd.gradgradcheck(grid.silu, (x,))
    plain = grid.apply(torch.nn.functional.silu, x)
    assert torch.allclose(grid.silu(x), plain)
    with torch.no_grad():
        assert torch.allclose(grid.silu(x), plain) and torch.allclose(grid.apply(torch.nn.functional.silu, x), plain)


def test_layer_norm_is_equivariant_and_normalises():
    torch.manual_seed(0)
    lmax, c = 3, 8
    norm = EquivariantLayerNormSH(lmax, c).double()
    x = 5 * torch.randn(6, (lmax + 1) ** 2, c, dtype=torch.float64) + 2
    d = wigner(o3.rand_matrix(dtype=torch.float64), lmax)
    assert torch.allclose(norm(rotate(x, d)), rotate(norm(x), d), atol=1e-10)
    out = norm(x)
    assert torch.allclose(out[:, 0].mean(-1), torch.zeros(6, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(out[:, 0].var(-1, unbiased=False), torch.ones(6, dtype=torch.float64), atol=1e-4)
    # l>0: each degree weighted equally, mean over channels of the balanced square is one
    balanced = sum(out[:, l * l : (l + 1) ** 2].pow(2).sum(1) / (2 * l + 1) for l in range(1, lmax + 1)) / lmax
    assert torch.allclose(balanced.mean(-1), torch.ones(6, dtype=torch.float64), atol=1e-4)


def test_so3_linear_is_equivariant():
    torch.manual_seed(0)
    lin = SO3Linear(4, 3, 2).double()
    x = torch.randn(5, 9, 4, dtype=torch.float64)
    d = wigner(o3.rand_matrix(dtype=torch.float64), 2)
    assert torch.allclose(lin(rotate(x, d)), rotate(lin(x), d), atol=1e-12)


def test_envelope_is_smooth_at_cutoff():
    env = PolynomialEnvelope(5.0, exponent=5)
    d = torch.tensor([0.0, 2.5, 4.999, 5.0, 6.0], dtype=torch.float64, requires_grad=True)
    value = env(d)
    assert value[0] == 1 and value[3] == 0 and value[4] == 0 and 0 < value[1] < 1
    (grad,) = torch.autograd.grad(value.sum(), d, create_graph=True)
    assert abs(grad[2]) < 1e-6 and grad[4] == 0
    d_all = torch.linspace(0, 5, 200, dtype=torch.float64)
    assert (env(d_all).diff() <= 1e-12).all()  # monotone


def test_gaussian_basis_centres_and_width():
    rbf = GaussianBasis(6.0, num=61, width=2.0)
    out = rbf(torch.tensor([3.0]))
    assert out.shape == (1, 61) and out[0].argmax() == 30 and out[0, 30] == 1.0
    assert torch.isclose(out[0, 31], torch.tensor(math.exp(-0.5 / 4)))  # one spacing = half a sigma


def test_edge_radial_equals_concatenated_mlp():
    torch.manual_seed(0)
    radial = EdgeRadial(num_rbf=10, num_tokens=7, hidden=6, out=4)
    rbf, src, dst = torch.rand(9, 10), torch.randint(0, 7, (9,)), torch.randint(0, 7, (9,))
    h = torch.cat([rbf, radial.src_embedding(src), radial.dst_embedding(dst)], -1)
    h = torch.nn.functional.silu(radial.norm1(radial.lin1(h)))
    h = torch.nn.functional.silu(radial.norm2(radial.lin2(h)))
    assert torch.allclose(radial(rbf, src, dst), radial.lin3(h), atol=1e-6)


def test_edge_softmax_normalises_per_centre_and_envelope_removes_edges():
    logits = torch.tensor([[0.0], [1.0], [2.0], [5.0]])
    dst = torch.tensor([0, 0, 1, 1])
    alpha = edge_softmax(logits, dst, 3, torch.ones(4))
    assert torch.allclose(alpha[:2].sum(), torch.tensor(1.0)) and torch.allclose(alpha[2:].sum(), torch.tensor(1.0))
    alpha = edge_softmax(logits, dst, 3, torch.tensor([1.0, 1.0, 1.0, 0.0]))  # edge 3 at the cutoff
    assert alpha[3] == 0 and torch.isclose(alpha[2, 0], torch.tensor(1.0))


def test_drop_path_drops_whole_structures():
    drop = GraphDropPath(0.5)
    x = torch.ones(6, 2)
    batch = torch.tensor([0, 0, 0, 1, 1, 2])
    assert torch.equal(drop.eval()(x, batch, 3), x)
    torch.manual_seed(1)
    out = drop.train()(x, batch, 3)
    for g in range(3):
        values = out[batch == g].unique()
        assert len(values) == 1 and values.item() in (0.0, 2.0)


def test_atom_tokens_lookup_and_unknown_elements():
    tokens = AtomTokens(["<pad>", "H", "C", "O"])
    assert tokens(torch.tensor([8, 1, 6])).tolist() == [3, 1, 2]
    with pytest.raises(KeyError, match="Cu"):
        tokens(torch.tensor([1, 29]))
    with pytest.raises(KeyError):
        tokens(torch.tensor([0]))
