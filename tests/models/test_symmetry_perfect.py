"""Symmetry on perfect, unrattled crystals, where neighbour distances tie in whole shells.

A neighbour cap that chose among equal distances would make the graph, and so energies,
forces and scores, depend on orientation, atom order, periodic image and cell choice. Every
preset and both heads are checked on an fcc(111) slab with an adsorbate on a hollow site and
on an L1_2 bulk cell (both far beyond the cap: whole shells sit at the k-th distance).
Each preset keeps its graph (cutoff, cap), lmax / mmax and grid; the deep presets run with
two blocks (depth does not change the symmetry, and keeps CI in seconds). Models run in
float64, so what is left is not round-off: permutation, periodic image and cell choice
must hold to 1e-7. A rotation also meets the S2 grid of the separable activation, itself
equivariant only approximately (about 1e-6 of the output at lmax 2, up to a few 1e-2 at
lmax 6 on the 18-point grid): a rotation must do no worse on the perfect crystal than
five times the same rotation on a rattled copy, where no distances tie, plus 1e-5 (an
arbitrary tie-break gave order-one errors).
"""

import contextlib

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, bulk, fcc111
from e3nn import o3
from torch_geometric.data import Batch, Data

from sfm.data.lattice import cart_to_frac, wrap_frac
from sfm.models import build_model
from sfm.models.diffusion.masks import mode_masks
from sfm.models.presets import PRESETS

SHEAR = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # a' = a + b: the same lattice


def perfect_slab():
    slab = fcc111("Cu", size=(2, 2, 3), a=3.6, vacuum=7.0, periodic=True)
    add_adsorbate(slab, "O", 1.2, "fcc")
    slab.set_tags([0] * 4 + [1] * 8 + [2])  # ASE numbers layers from the top; OC20: 0 sub, 1 surface, 2 adsorbate
    return slab


def perfect_bulk():
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.numbers[0] = 79  # L1_2 Cu3Au
    atoms.set_tags([1] * 4)
    return atoms


def to_batch(atoms, pos=None, cell=None, order=None):
    order = np.arange(len(atoms)) if order is None else order
    pos = torch.tensor(atoms.positions if pos is None else pos, dtype=torch.float64)[order]
    cell = torch.tensor(np.asarray(atoms.cell) if cell is None else cell, dtype=torch.float64)[None]
    data = Data(
        atomic_numbers=torch.tensor(atoms.numbers)[order],
        pos=pos,
        cell=cell,
        tags=torch.tensor(atoms.get_tags())[order],
        natoms=len(atoms),
    )
    batch = Batch.from_data_list([data])
    batch.frac = wrap_frac(cart_to_frac(batch.pos, batch.cell[batch.batch]))
    return batch


with torch.random.fork_rng():
    torch.manual_seed(3)
    ROTATION = o3.rand_matrix(dtype=torch.float64)


def variants(atoms):
    """``(name, batch, order)``: the same crystal rotated, permuted, with other periodic
    images, and described by another cell; ``order`` maps reference atoms onto the variant's."""
    cell, rot = np.asarray(atoms.cell), ROTATION.numpy()
    order = np.random.default_rng(0).permutation(len(atoms))
    image = atoms.positions.copy()
    image[::2] += cell[0] - 2 * cell[1]  # other periodic images of half the atoms
    same = np.arange(len(atoms))
    yield "rotation", to_batch(atoms, atoms.positions @ rot.T, cell @ rot.T), same
    yield "permutation", to_batch(atoms, order=order), order
    yield "periodic image", to_batch(atoms, image), same
    yield "cell choice", to_batch(atoms, cell=SHEAR.numpy() @ cell), same


@contextlib.contextmanager
def float64():
    """Models built and run in float64: what is left of a symmetry error is then not round-off."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build(preset, **kwargs):
    torch.manual_seed(0)
    with float64():
        return build_model(preset, num_layers=min(PRESETS[preset]["num_layers"], 2), **kwargs).eval()


def symmetry_errors(run, kinds, atoms, names):
    """Largest error of each variant in ``names``, relative to each output's size on this
    crystal and on a rattled copy (by symmetry some outputs vanish on the perfect one).

    ``run(batch) -> dict``; ``kinds`` maps output keys to "invariant" (structure-level),
    "per_atom" (permutes) or "vector" (permutes and rotates)."""
    ref = run(to_batch(atoms))
    rattled = atoms.copy()
    rattled.rattle(0.05, seed=1)
    broken = run(to_batch(rattled))
    scale = {k: max(ref[k].abs().max().item(), broken[k].abs().max().item()) for k in kinds}
    errors = {}
    for name, batch, order in variants(atoms):
        if name not in names:
            continue
        out = run(batch)
        worst = 0.0
        for key, kind in kinds.items():
            expected = ref[key] if kind == "invariant" else ref[key][torch.as_tensor(order)]
            if kind == "vector" and name == "rotation":
                expected = expected @ ROTATION.T
            worst = max(worst, (out[key] - expected).abs().max().item() / scale[key])
        errors[name] = worst
    return errors


def assert_symmetric(run, kinds, atoms, names):
    perfect = symmetry_errors(run, kinds, atoms, names)
    rattled = atoms.copy()
    rattled.rattle(0.05, seed=2)
    grid = symmetry_errors(run, kinds, rattled, ["rotation"])["rotation"]  # no ties there
    for name, err in perfect.items():
        bound = 5 * grid + 1e-5 if name == "rotation" else 1e-7
        assert err <= bound, f"{name}: error {err:.2e} of the output, bound {bound:.2e}"


@pytest.mark.parametrize("structure", [perfect_slab, perfect_bulk])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_s2ef_invariant_on_perfect_crystals(preset, structure):
    for forces in ["direct", "conservative"] if preset == "tiny" else ["direct"]:
        model = build(preset, forces=forces)
        names = ["rotation", "permutation", "periodic image", "cell choice"]
        assert_symmetric(model.predict, {"energy": "invariant", "forces": "vector"}, structure(), names)


def diffusion_inputs(batch):
    masks = mode_masks(batch, "inpaint")
    t, sigma = torch.tensor([0.4], dtype=torch.float64), torch.tensor([[0.1, 0.1, 0.02]], dtype=torch.float64)
    return batch.atomic_numbers.long(), batch.frac, batch.cell, batch.batch, t, sigma, masks


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_diffusion_scores_symmetric_on_a_perfect_slab(preset):
    """Fractional scores are rotation invariant and permute with the atoms; the lattice noise
    (in the latent, symmetric) is invariant. A change of cell changes the fractional frame
    the scores live in, so it is not an invariance of this head."""
    model = build(preset, head="diffusion")

    @torch.no_grad()
    def run(batch):
        return model(*diffusion_inputs(batch))

    kinds = {"coord": "per_atom", "lattice_eps": "invariant"}
    assert_symmetric(run, kinds, perfect_slab(), ["rotation", "permutation", "periodic image"])
