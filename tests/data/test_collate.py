import functools

import torch

from sfm.data import LmdbDataset, collate
from sfm.data.lattice import cart_to_frac, frac_to_cart


def test_batches_different_sizes(make_structure):
    items = [make_structure(seed, natoms=n, s2ef=True) for seed, n in enumerate((5, 9, 3))]
    del items[0].fixed, items[2].fixed  # fixed from tags there
    items[1].fixed[:] = 1.0  # stored `fixed` wins over tags
    b = collate(items)
    assert b.num_graphs == 3 and b.num_dropped == 0
    assert b.cell.shape == (3, 3, 3) and b.pos.shape == (17, 3) and b.frac.shape == (17, 3)
    assert torch.equal(b.batch, torch.tensor([0] * 5 + [1] * 9 + [2] * 3)) and b.ptr.tolist() == [0, 5, 14, 17]
    assert torch.equal(b.natoms, torch.tensor([5, 9, 3])) and b.sid.tolist() == [0, 1, 2]
    assert b.fixed.dtype == torch.bool
    assert torch.equal(b.fixed, torch.cat([items[0].tags == 0, torch.ones(9, dtype=torch.bool), items[2].tags == 0]))
    for g, d in enumerate(items):
        assert torch.equal(b.cell[g], d.cell[0]) and torch.equal(b.pos[b.batch == g], d.pos)
    assert ((b.frac >= 0) & (b.frac < 1)).all()
    # frac is the same point as pos, up to a lattice translation
    cells = b.cell[b.batch]
    shift = cart_to_frac(frac_to_cart(b.frac, cells) - b.pos, cells)
    assert (shift - shift.round()).abs().max() < 1e-5
    assert "frac" not in items[0] and items[1].fixed.dtype == torch.float32  # inputs untouched


def test_max_sites_drops_and_counts(make_structure):
    items = [make_structure(i, natoms=n) for i, n in enumerate((4, 40, 8, 50))]
    b = collate(items, max_sites=10)
    assert b.num_graphs == 2 and b.sid.tolist() == [0, 2] and b.num_dropped == 2
    assert collate(items[1:2], max_sites=10) is None


def test_with_dataloader(lmdb_file):
    loader = torch.utils.data.DataLoader(
        LmdbDataset(lmdb_file), batch_size=2, collate_fn=functools.partial(collate, max_sites=10)
    )
    first, second, third = loader  # natoms 8, 9 | 10, 11 | 12
    assert first.num_graphs == 2 and first.num_dropped == 0
    assert second.num_graphs == 1 and second.num_dropped == 1 and second.natoms.tolist() == [10]
    assert third is None


def test_contract_against_ase(make_structure):
    """frac = ASE's wrapped scaled positions on oblique cells; cell [B, 3, 3] whatever the stored
    shape; tags -1 (unknown) and nothing fixed where an entry has no tags."""
    from ase import Atoms

    items = [make_structure(seed, natoms=n) for seed, n in enumerate((6, 4))]
    items[0].cell = items[0].cell.reshape(9)  # a flat stored cell reads the same
    del items[1].tags
    b = collate(items)
    assert b.cell.shape == (2, 3, 3) and b.tags.dtype == torch.long
    assert b.tags[b.batch == 1].tolist() == [-1] * 4 and not b.fixed[b.batch == 1].any()
    for g, d in enumerate(items):
        atoms = Atoms(positions=d.pos.double().numpy(), cell=d.cell.reshape(3, 3).double().numpy(), pbc=True)
        expected = torch.as_tensor(atoms.get_scaled_positions(wrap=True))
        diff = b.frac[b.batch == g].double() - expected
        assert (diff - diff.round()).abs().max() < 1e-5  # equal up to the wrap at exactly 0 / 1


def test_frac_is_bit_for_bit_the_batched_conversion(make_structure):
    """Models and samplers read batch.frac instead of converting pos themselves: the per-structure
    conversion here gives exactly what the batched one over cell[batch] gives."""
    from sfm.data.lattice import wrap_frac

    b = collate([make_structure(i, natoms=5 + 3 * i) for i in range(6)])
    assert torch.equal(b.frac, wrap_frac(cart_to_frac(b.pos, b.cell[b.batch])))
