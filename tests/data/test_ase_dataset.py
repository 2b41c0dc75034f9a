"""ASE sources as datasets (sfm/data/atoms.py, ase_dataset.py, dataset.py, energy_reference.py):
fields checked against what ASE itself reports for the same atoms."""

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from sfm.data import write_lmdb
from sfm.data.ase_dataset import AseDbDataset, AseFileDataset
from sfm.data.dataset import open_dataset
from sfm.data.energy_reference import EnergyReference


def adslab(seed: int, tags: bool = True):
    """A Cu(111) 2x2x3 slab with an O adsorbate, OC20 tags (0 bottom two layers, 1 top, 2 O),
    the bottom layers held by FixAtoms, rattled, with EMT energy and forces attached."""
    atoms = fcc111("Cu", (2, 2, 3), vacuum=7.0)
    add_adsorbate(atoms, "O", 1.6, "fcc")
    atoms.pbc = True
    layer = atoms.get_tags()  # ASE: 1 = top layer ... 3 = bottom; the adsorbate 0
    oc20 = np.where(layer == 0, 2, np.where(layer == 1, 1, 0))
    atoms.set_tags(oc20 if tags else 0)
    if not tags:
        del atoms.arrays["tags"]
    atoms.set_constraint(FixAtoms(mask=oc20 == 0))
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    atoms.info.pop("adsorbate_info")
    return atoms


def check_fields(data, atoms, sid):
    assert torch.equal(data.pos, torch.tensor(atoms.positions, dtype=torch.float32))
    assert torch.equal(data.cell[0], torch.tensor(atoms.cell[:], dtype=torch.float32))
    assert data.atomic_numbers.tolist() == atoms.numbers.tolist() and data.natoms == len(atoms)
    assert data.tags.tolist() == atoms.get_tags().tolist()
    assert data.fixed.tolist() == [i in set(atoms.constraints[0].index) for i in range(len(atoms))]
    assert data.y == pytest.approx(atoms.get_potential_energy(), abs=0)
    assert torch.equal(data.force, torch.tensor(atoms.get_forces(), dtype=torch.float32))
    assert data.sid == sid


@pytest.mark.parametrize("suffix", [".aselmdb", ".db", ".json"])
def test_ase_db_rows_as_oc20_data(tmp_path, suffix):
    frames = [adslab(i) for i in range(3)]
    path = tmp_path / f"runs{suffix}"
    with ase.db.connect(str(path)) as db:
        for i, atoms in enumerate(frames):
            db.write(atoms, data={"pos_relaxed": atoms.positions + 0.5} if i == 1 else {})
    ds = open_dataset(path, require=("y", "force"))
    assert isinstance(ds, AseDbDataset) and len(ds) == 3
    for i, atoms in enumerate(frames):
        check_fields(ds[i], atoms, sid=i + 1)  # the row id
    assert torch.equal(ds[1].pos_relaxed, torch.tensor(frames[1].positions + 0.5, dtype=torch.float32))


def test_ase_lmdb_named_lmdb_and_folder_of_shards(tmp_path):
    for name, seeds in (("a.lmdb", (0, 1)), ("shards/b.aselmdb", (2,)), ("shards/c.aselmdb", (3, 4))):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        with ase.db.connect(str(tmp_path / name), type="aselmdb") as db:
            for s in seeds:
                db.write(adslab(s))
    assert isinstance(open_dataset(tmp_path / "a.lmdb"), AseDbDataset)  # told apart from an OC20 LMDB
    ds = open_dataset(tmp_path / "shards")
    assert len(ds) == 3 and [int(ds[i].sid) for i in range(3)] == [1, 1, 2]
    check_fields(ds[2], adslab(4), sid=2)


def test_frames_of_extxyz_traj_and_globs(tmp_path):
    frames = [adslab(i) for i in range(4)]
    ase.io.write(tmp_path / "a.extxyz", frames[:2])
    ase.io.write(tmp_path / "b.extxyz", frames[2:])
    ase.io.write(tmp_path / "t.traj", frames)
    xyz = open_dataset(str(tmp_path / "*.extxyz"))
    assert isinstance(xyz, AseFileDataset) and len(xyz) == 4
    traj = open_dataset(tmp_path / "t.traj")
    for i, atoms in enumerate(frames):
        check_fields(traj[i], atoms, sid=i)  # frame position in the dataset
        got = xyz[i]  # extxyz keeps per-atom floats to 8 decimals
        assert torch.allclose(got.pos, traj[i].pos, atol=1e-7) and torch.allclose(got.force, traj[i].force, atol=1e-7)
        assert got.tags.tolist() == traj[i].tags.tolist() and torch.equal(got.fixed, traj[i].fixed)
    frames[0].info["sid"] = 4021
    ase.io.write(tmp_path / "own.extxyz", frames[0])
    assert open_dataset(tmp_path / "own.extxyz")[0].sid == 4021


def test_absent_tags_are_unknown_fixed_from_constraints(tmp_path):
    atoms = adslab(0, tags=False)
    ase.io.write(tmp_path / "t.traj", atoms)
    data = open_dataset(tmp_path / "t.traj")[0]
    assert not atoms.has("tags")
    assert data.tags.tolist() == [-1] * len(atoms) and data.fixed.sum() == 8


def test_errors_name_the_file_and_entry(tmp_path):
    molecule = adslab(0)
    molecule.pbc, molecule.cell = False, None
    ase.io.write(tmp_path / "mol.extxyz", [adslab(1), molecule])
    with pytest.raises(ValueError, match=r"mol.extxyz frame 1: no periodic cell"):
        open_dataset(tmp_path / "mol.extxyz")[1]
    bare = adslab(2)
    bare.calc = None
    with ase.db.connect(str(tmp_path / "bare.db")) as db:
        db.write(adslab(3))
        db.write(bare)
    ds = open_dataset(tmp_path / "bare.db", require=("y", "force"))
    with pytest.raises(ValueError, match=r"bare.db row 2: missing \['y', 'force'\] that the task needs"):
        ds[1]
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(ValueError, match="notes.txt: unknown format"):
        open_dataset(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        open_dataset(str(tmp_path / "*.vasp"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(tmp_path / "nope.aselmdb")
    with pytest.raises(ValueError, match="mixes formats"):
        open_dataset(str(tmp_path / "[bm]*"))


def test_open_dataset_keeps_oc20_lmdb(lmdb_file):
    ds = open_dataset(lmdb_file)
    assert type(ds).__name__ == "LmdbDataset" and len(ds) == 5


def test_energy_references_linear_and_gas(tmp_path):
    atoms = adslab(0)
    atoms.info["slab_energy"] = -2.5
    ase.io.write(tmp_path / "a.extxyz", atoms)
    refs = {"Cu": -0.25, "O": -4.0}
    raw = atoms.get_potential_energy()
    linear = open_dataset(tmp_path / "a.extxyz", reference=EnergyReference(refs))[0]
    symbols = atoms.get_chemical_symbols()
    assert linear.y == pytest.approx(raw - sum(refs[s] for s in symbols), abs=1e-12)
    gas = open_dataset(tmp_path / "a.extxyz", reference=EnergyReference(refs, atoms="adsorbate"))[0]
    assert gas.y == pytest.approx(raw + 2.5 + 4.0, abs=1e-12)  # one O adsorbate (tags 2)
    with pytest.raises(KeyError, match=r"a.extxyz frame 0: no reference energy for \['Cu'\]"):
        open_dataset(tmp_path / "a.extxyz", reference=EnergyReference({"O": -4.0}))[0]
    del atoms.info["slab_energy"]
    ase.io.write(tmp_path / "b.extxyz", atoms)
    with pytest.raises(ValueError, match="b.extxyz frame 0: gas references need the clean slab's energy"):
        open_dataset(tmp_path / "b.extxyz", reference=EnergyReference(refs, atoms="adsorbate"))[0]
    with pytest.raises(ValueError, match="unknown element symbol"):
        EnergyReference({"Xx": 1.0})
    write_lmdb(tmp_path / "o.lmdb", [linear])
    with pytest.raises(ValueError, match="apply to ASE sources"):
        open_dataset(tmp_path / "o.lmdb", reference=EnergyReference(refs))


def test_aselmdb_in_dataloader_workers(tmp_path):
    with ase.db.connect(str(tmp_path / "w.aselmdb")) as db:
        for s in range(4):
            db.write(adslab(s))
    ds = open_dataset(tmp_path / "w.aselmdb")
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert sorted(int(d.sid) for d in loader) == [1, 2, 3, 4]
