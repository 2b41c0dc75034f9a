"""SH layout, edge frames and Wigner-D (sfm.models.so3) against e3nn."""

import pytest
import torch
from e3nn import o3

from sfm.models.so3 import EdgeRotation, edge_frame, sh_layout

Y = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)


def unit_vectors(n=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, 3, generator=g, dtype=torch.float64)
    special = torch.tensor([[0, 1, 0], [0, -1, 0], [1, 0, 0], [0, 0, -1], [1, 1e-9, 0]], dtype=torch.float64)
    u = torch.cat([special, u])
    return u / u.norm(dim=-1, keepdim=True)


def test_layout_indices():
    lay = sh_layout(4, 2)
    assert lay.dim == 25 and lay.n_reduced == 5 + 2 * 4 + 2 * 3 and lay.n_half == 5 + 4 + 3
    # reduced rows are (l, m) pairs with |m| <= mmax, each exactly once
    assert sorted(lay.reduced.tolist()) == [i for i in range(25) if abs(lay.order[i]) <= 2]
    assert lay.order[lay.reduced[:5]].tolist() == [0] * 5  # m=0 block first
    for m, start, n in lay.m_slices[1:]:
        assert lay.order[lay.reduced[start : start + n]].tolist() == [m] * n
        assert lay.order[lay.reduced[start + n : start + 2 * n]].tolist() == [-m] * n
        assert lay.degree[lay.reduced[start : start + n]].tolist() == list(range(m, 5))
    with pytest.raises(ValueError):
        sh_layout(2, 3)


def test_e3nn_conventions():
    """l=1 is (x, y, z) with D = R; the pole (m=0) is y: what so3's docstring states."""
    v = torch.randn(4, 3, dtype=torch.float64)
    sh1 = o3.spherical_harmonics(1, v, normalize=False)
    assert torch.allclose(sh1 / sh1.norm(dim=-1, keepdim=True), v / v.norm(dim=-1, keepdim=True))
    sh_pole = o3.spherical_harmonics(3, Y, normalize=True)
    assert torch.allclose(sh_pole[[0, 1, 2, 4, 5, 6]], torch.zeros(6, dtype=torch.float64), atol=1e-12)


def test_edge_frame_rotates_edge_onto_pole():
    u = unit_vectors()
    rot = edge_frame(u)
    assert torch.allclose(torch.einsum("eab,eb->ea", rot, u), Y.expand_as(u), atol=1e-12)
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(rot), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(len(u), dtype=torch.float64))


@pytest.mark.parametrize("lmax,mmax", [(2, 1), (4, 2), (6, 3), (6, 6)])
def test_wigner_matches_e3nn(lmax, mmax):
    u = unit_vectors()
    torch.set_default_dtype(torch.float64)  # e3nn's reference is float64 only then
    try:
        rotation = EdgeRotation(lmax, mmax)
        irreps = o3.Irreps([(1, (l, (-1) ** l)) for l in range(lmax + 1)])
        ref = irreps.D_from_matrix(edge_frame(u))[:, rotation.reduced]
    finally:
        torch.set_default_dtype(torch.float32)
    assert torch.allclose(rotation(u), ref, atol=1e-9)
    # float32 use: round-off only
    assert torch.allclose(EdgeRotation(lmax, mmax)(u.float()), ref.float(), atol=1e-5)


def test_wigner_gradient_finite_along_poles():
    u = unit_vectors().requires_grad_(True)
    wigner = EdgeRotation(4, 2).double()(u)
    (wigner * torch.randn_like(wigner)).sum().backward()
    assert torch.isfinite(u.grad).all()


def test_rotated_m0_rows_are_edge_harmonics():
    """Row m=0 of D(R) for degree l is Y_l(u) (up to normalisation): the edge frame is right."""
    u = unit_vectors()
    rotation = EdgeRotation(3, 1).double()
    wigner = rotation(u)
    sh = o3.spherical_harmonics(list(range(4)), u, normalize=True, normalization="norm")
    for l in range(4):
        assert torch.allclose(wigner[:, l, l * l : (l + 1) ** 2], sh[:, l * l : (l + 1) ** 2], atol=1e-5)
