import itertools

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.geometry import find_mic, minkowski_reduce
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sfm.data.lattice import cart_to_frac, check_lattice, frac_to_cart, minimum_image, volume, wrap_frac


@st.composite
def skewed_cells(draw):
    """Right-handed cells, from near-cubic to strongly sheared (rows = a, b, c)."""
    base = np.diag(draw(arrays(np.float64, 3, elements=st.floats(3.0, 15.0))))
    shear = draw(arrays(np.float64, (3, 3), elements=st.floats(-1.5, 1.5)))
    cell = base + shear * base.diagonal().mean()
    det = np.linalg.det(cell)
    norms = np.linalg.norm(cell, axis=1).prod()

    assume(abs(det) > 0.05 * norms)
    return cell if det > 0 else cell[[1, 0, 2]]


@st.composite
def oc20_cells(draw):
    """OC20-like slab cells: a, b ~ 8-12 A oblique in-plane, c ~ 30-40 A and tilted."""
    a, b = draw(st.floats(8, 12)), draw(st.floats(8, 12))
    gamma = np.radians(draw(st.floats(55, 125)))
    c = [draw(st.floats(-4, 4)), draw(st.floats(-4, 4)), draw(st.floats(30, 40))]
    return np.array([[a, 0, 0], [b * np.cos(gamma), b * np.sin(gamma), 0], c])


any_cell = st.one_of(skewed_cells(), oc20_cells())
points = arrays(np.float64, (6, 3), elements=st.floats(-2.0, 3.0))


@settings(max_examples=60, deadline=None)
@given(any_cell, points)
def test_frac_cart_against_ase(cell, frac):
    cart = frac @ cell
    atoms = Atoms("H6", positions=cart, cell=cell, pbc=True)
    got = cart_to_frac(torch.tensor(cart), torch.tensor(cell))
    np.testing.assert_allclose(got.numpy(), atoms.get_scaled_positions(wrap=False), atol=1e-9)
    np.testing.assert_allclose(frac_to_cart(got, torch.tensor(cell)).numpy(), cart, atol=1e-9)
    # per-atom batched lattice [N, 3, 3] gives the same
    per_atom = torch.tensor(cell).expand(6, 3, 3)
    np.testing.assert_allclose(cart_to_frac(torch.tensor(cart), per_atom).numpy(), got.numpy(), atol=1e-9)
    np.testing.assert_allclose(frac_to_cart(got, per_atom).numpy(), cart, atol=1e-9)
    wrapped = wrap_frac(got).numpy()
    np.testing.assert_allclose(np.cos(2 * np.pi * wrapped), np.cos(2 * np.pi * atoms.get_scaled_positions()), atol=1e-8)
    assert volume(torch.tensor(cell)).item() == pytest.approx(atoms.cell.volume)


def test_not_the_transpose_convention():
    cell = torch.tensor([[10.0, 0, 0], [5.0, 8.0, 0], [2.0, 1.0, 30.0]], dtype=torch.float64)
    frac = torch.tensor([[0.25, 0.5, 0.1]], dtype=torch.float64)
    cart = frac_to_cart(frac, cell)
    assert torch.allclose(cart, frac[0, 0] * cell[0] + frac[0, 1] * cell[1] + frac[0, 2] * cell[2])
    assert not torch.allclose(cart @ torch.linalg.inv(cell).T, frac)


def test_wrap_frac_edges():
    x = torch.tensor([-1e-20, -0.0, 1.0, 2.5, -0.25, 0.9999999], dtype=torch.float32)
    w = wrap_frac(x)
    assert ((w >= 0) & (w < 1)).all()
    assert w[0] == 0.0 and not torch.signbit(w[:2]).any()
    assert torch.allclose(w[2:], torch.tensor([0.0, 0.5, 0.75, 0.9999999]))


_BOX = np.array(list(itertools.product(range(-3, 4), repeat=3)))  # brute-force image shifts


def brute_force_minimum_image(dfrac: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Shortest image lengths by brute force over a box of shifts in ASE's Minkowski-reduced basis of
    the cell (in the cell's own basis a strongly sheared cell can need shifts of 10 and more)."""
    reduced, _ = minkowski_reduce(cell)
    frac = np.linalg.solve(reduced.T, (dfrac @ cell).T).T
    frac -= np.round(frac)
    return np.linalg.norm((frac[:, None, :] + _BOX) @ reduced, axis=-1).min(axis=1)


@settings(max_examples=80, deadline=None)
@given(any_cell, points)
def test_minimum_image_against_ase_and_brute_force(cell, dfrac):
    vec = minimum_image(torch.tensor(dfrac), torch.tensor(cell)).numpy()
    length = np.linalg.norm(vec, axis=1)
    np.testing.assert_allclose(length, brute_force_minimum_image(dfrac, cell), atol=1e-8)
    # ASE agrees except on strongly sheared cells, where find_mic can miss the shortest image
    # (e.g. cell [[6,0,0],[-4.5,3,3],[3,3,6]], dfrac (1.75,)*3: ASE 2.93 A, true 1.72 A)
    _, ase_len = find_mic(dfrac @ cell, cell, pbc=True)
    assert (length <= ase_len + 1e-8).all()
    shift = np.linalg.solve(cell.T, (vec - dfrac @ cell).T).T  # must be whole lattice vectors
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-8)


def test_minimum_image_where_ase_find_mic_misses():
    cell = np.array([[6.0, 0, 0], [-4.5, 3, 3], [3, 3, 6]])
    dfrac = np.array([1.75, 1.75, 1.75])
    got = minimum_image(torch.tensor(dfrac), torch.tensor(cell)).norm().item()
    assert got == pytest.approx(np.linalg.norm((dfrac + [-3, -3, -1]) @ cell))  # 1.718 A
    assert got < find_mic(dfrac @ cell, cell, pbc=True)[1] - 1.0


def test_minimum_image_beats_rounding_on_sheared_cell():
    cell = np.array([[10.0, 0, 0], [9.5, 1.0, 0], [0, 0, 10.0]])  # b nearly parallel to a
    dfrac = np.array([[0.45, -0.45, 0.0], [0.3, 0.4, 0.2]])
    got = minimum_image(torch.tensor(dfrac), torch.tensor(cell)).norm(dim=-1).numpy()
    rounded = np.linalg.norm((dfrac - np.round(dfrac)) @ cell, axis=1)
    _, ref_len = find_mic(dfrac @ cell, cell, pbc=True)
    np.testing.assert_allclose(got, ref_len, atol=1e-10)
    assert (got < rounded - 1.0).any()  # plain rounding is far off here


def test_minimum_image_batched_and_differentiable():
    cells = torch.tensor(np.stack([np.eye(3) * 5, [[8, 0, 0], [-4, 7, 0], [1, 2, 30.0]]]), requires_grad=True)
    dfrac = torch.tensor([[0.6, 0.1, -0.2], [0.9, 0.45, 0.5]], dtype=torch.float64, requires_grad=True)
    vec = minimum_image(dfrac, cells)
    for k in range(2):
        _, ref_len = find_mic(dfrac[k].detach().numpy() @ cells[k].detach().numpy(), cells[k].detach().numpy())
        assert vec[k].norm().item() == pytest.approx(ref_len, abs=1e-10)
    vec.pow(2).sum().backward()
    assert torch.isfinite(dfrac.grad).all() and cells.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "cell, message",
    [
        ([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1]], "singular"),
        ([[0.0, 0, 0], [0, 0, 0], [0, 0, 0]], "singular"),
        ([[1.0, 0, 0], [0, 1, 0], [0, 0, -1]], "left-handed"),
        ([[1.0, 0, 0], [0, float("inf"), 0], [0, 0, 1]], "non-finite"),
    ],
)
def test_check_lattice_errors(cell, message):
    with pytest.raises(ValueError, match=message):
        check_lattice(torch.tensor(cell))
    good = torch.eye(3)
    with pytest.raises(ValueError, match=rf"lattice\[1\] .*{message}"):
        check_lattice(torch.stack([good, torch.tensor(cell)]))
    check_lattice(good)


def test_minimum_image_on_a_nearly_degenerate_cell():
    """Found by hypothesis: a and b nearly parallel, so the shortest image of (1.5, 1.5, 1.5) lies
    more than 8 cell vectors away in the cell's own basis (9.953 A; the best within +-8: 9.995 A)."""
    cell = np.array([[47 / 6, -29 / 12, 0.0], [29 / 6, -13 / 12, 0.0], [29 / 3, 29 / 6, 119 / 6]])
    dfrac = np.full((1, 3), 1.5)
    got = minimum_image(torch.tensor(dfrac), torch.tensor(cell)).norm(dim=-1).numpy()
    np.testing.assert_allclose(got, brute_force_minimum_image(dfrac, cell), atol=1e-8)
    in_box = np.array(list(itertools.product(range(-8, 9), repeat=3)))
    assert got[0] < np.linalg.norm((dfrac + in_box) @ cell, axis=-1).min() - 0.04
