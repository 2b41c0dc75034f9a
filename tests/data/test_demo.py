"""The demo world (sfm.data.demo): layout, fields, determinism, held-out splits, and the
stored energies/forces checked against ASE's EMT directly."""

import json
import pickle
import threading
from types import SimpleNamespace

import lmdb
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.optimize import BFGS, FIRE

from sfm.data import LmdbDataset, demo, emt_world

SPLITS = ("train", "val_id", "test_id", "val_ood_ads", "val_ood_cat")
ADSORBATE_Z = (1, 6, 7, 8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The ``--small`` world, built once with 2 workers: ``.path`` and ``.entries``.

    ``.entries[kind, split]`` = the ``Data`` as stored in each LMDB, in key order, read here, before any
    ``LmdbDataset`` holds the files open (LMDB allows one environment per file and process).
    """
    out = tmp_path_factory.mktemp("demo") / "demo_small"
    demo.main(["--out", str(out), "--small", "--workers", "2"])
    entries = {}
    for path in sorted(out.glob("*/*/data.lmdb")):
        env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
        with env.begin() as txn:
            stored = {int(k): pickle.loads(v) for k, v in txn.cursor() if k.isdigit()}
        env.close()
        entries[path.parts[-3], path.parts[-2]] = [stored[k] for k in sorted(stored)]
    return SimpleNamespace(path=out, entries=entries)


def is2re(world, split):
    return world.entries["is2re", split]


def s2ef(world, split):
    return world.entries["s2ef", split]


def atoms_of(data, pos):
    return Atoms(
        numbers=data.atomic_numbers.numpy(),
        positions=np.asarray(pos, dtype=float),
        cell=data.cell[0].double().numpy(),
        pbc=True,
    )


def emt(atoms):
    atoms.calc = EMT()
    return atoms.get_potential_energy(), atoms.get_forces()


def test_layout_and_summary(world):
    for split in SPLITS:
        assert (world.path / "is2re" / split / "data.lmdb").is_file()
    for split in ("train", "val_id"):
        assert (world.path / "s2ef" / split / "data.lmdb").is_file()
    summary = json.loads((world.path / "summary.json").read_text())
    assert summary["config"]["num_train"] == demo.SIZES["small"]
    for name, count in summary["entries"].items():
        assert len(LmdbDataset(world.path / name / "data.lmdb")) == count
    assert summary["entries"]["is2re/train"] == demo.SIZES["small"]
    sids = [int(d.sid) for split in SPLITS for d in is2re(world, split)]
    assert len(sids) == len(set(sids))
    mapping = json.loads((world.path / "data_mapping.json").read_text())
    assert sorted(int(s) for s in mapping) == sorted(sids)


def test_is2re_fields(world):
    for split in SPLITS:
        for d in is2re(world, split):
            n = d.natoms
            assert isinstance(n, int) and 30 <= n <= 80
            assert d.atomic_numbers.dtype == torch.long and d.atomic_numbers.shape == (n,)
            assert d.pos.dtype == torch.float32 and d.pos.shape == (n, 3)
            assert d.pos_relaxed.dtype == torch.float32 and d.pos_relaxed.shape == (n, 3)
            assert d.cell.dtype == torch.float32 and d.cell.shape == (1, 3, 3)
            assert d.tags.dtype == torch.long and set(d.tags.tolist()) == {0, 1, 2}
            assert d.fixed.dtype == torch.bool and torch.equal(d.fixed, d.tags == 0)
            is_ads = torch.isin(d.atomic_numbers, torch.tensor(ADSORBATE_Z))
            assert torch.equal(is_ads, d.tags == 2)
            assert isinstance(d.y_init, float) and isinstance(d.y_relaxed, float)
            assert 25.0 <= float(torch.linalg.norm(d.cell[0, 2])) <= 36.0
            for pos in (d.pos, d.pos_relaxed):  # Cartesian, wrapped into the cell
                frac = torch.linalg.solve(d.cell[0].double().T, pos.double().T).T
                assert frac.min() >= -1e-5 and frac.max() < 1 + 1e-5


def test_s2ef_fields_and_frames(world):
    for split in ("train", "val_id"):
        relaxed = {int(d.sid): d for d in is2re(world, split)}
        frames = s2ef(world, split)
        assert {int(f.sid) for f in frames} == set(relaxed)
        for f in frames:
            n = f.natoms
            assert f.pos.shape == f.force.shape == (n, 3) and f.force.dtype == torch.float32
            assert f.fixed.dtype == torch.bool and f.cell.shape == (1, 3, 3)
            assert isinstance(f.y, float) and isinstance(f.fid, int)
        for sid, d in relaxed.items():
            own = sorted((f for f in frames if int(f.sid) == sid), key=lambda f: f.fid)
            assert own[0].fid == 0 and torch.equal(own[0].pos, d.pos) and own[0].y == d.y_init
            assert torch.equal(own[-1].pos, d.pos_relaxed) and own[-1].y == d.y_relaxed


def test_held_out_splits(world):
    mapping = json.loads((world.path / "data_mapping.json").read_text())
    held_ads = set(demo.HELD_OUT_ADSORBATES)
    formulas = {a.smiles: sorted(a.atoms.numbers.tolist()) for a in demo.load_adsorbates()}
    for split in SPLITS:
        for d in is2re(world, split):
            metals = set(d.atomic_numbers[d.tags != 2].tolist())
            held_cat = 46 in metals or metals == {29, 79}  # Pd, or the Au-Cu alloy
            adsorbate = mapping[str(d.sid)]["adsorbate"]
            assert sorted(d.atomic_numbers[d.tags == 2].tolist()) == formulas[adsorbate]
            assert held_cat == (split == "val_ood_cat"), (split, metals)
            assert (adsorbate in held_ads) == (split == "val_ood_ads"), (split, adsorbate)


def test_fixed_atoms_unmoved_and_distances_sane(world):
    for d in is2re(world, "train") + is2re(world, "val_ood_cat"):
        assert torch.equal(d.pos[d.fixed], d.pos_relaxed[d.fixed])
        atoms = atoms_of(d, d.pos_relaxed)
        dist = atoms.get_all_distances(mic=True) + np.eye(len(atoms)) * 99
        assert dist.min() > 0.6
        metal = d.tags.numpy() != 2
        assert dist[np.ix_(metal, metal)].min() > 2.0


def test_energies_and_forces_match_ase_emt(world):
    """S2EF frames against EMT: y - y_relaxed and forces recomputed from scratch."""
    relaxed = {int(d.sid): d for d in is2re(world, "train")}
    frames = s2ef(world, "train")
    for f in frames[:: max(1, len(frames) // 6)]:
        d = relaxed[int(f.sid)]
        e_frame, forces = emt(atoms_of(f, f.pos))
        e_relaxed, _ = emt(atoms_of(d, d.pos_relaxed))
        assert f.y - d.y_relaxed == pytest.approx(e_frame - e_relaxed, abs=2e-3)
        np.testing.assert_allclose(f.force.numpy(), forces, atol=2e-3)


def test_relaxed_forces_small_on_free_atoms(world):
    for d in is2re(world, "val_id"):
        _, forces = emt(atoms_of(d, d.pos_relaxed))
        free = ~d.fixed.numpy()
        assert np.linalg.norm(forces[free], axis=1).max() < emt_world.FMAX + 0.01


def test_y_relaxed_is_referenced_to_relaxed_clean_slab_and_gas(world):
    """y = E(system) - E(relaxed clean slab) - sum of gas references (module docstring)."""
    gas = {}
    for name in ("H2", "H2O", "CO", "N2"):
        mol = molecule(name)
        mol.calc = EMT()
        BFGS(mol, logfile=None).run(fmax=0.001, steps=1000)
        gas[name] = mol.get_potential_energy()
    ref = {"H": gas["H2"] / 2, "O": gas["H2O"] - gas["H2"], "N": gas["N2"] / 2}
    ref["C"] = gas["CO"] - ref["O"]
    for d in is2re(world, "test_id")[:3]:
        slab_mask = (d.tags != 2).numpy()
        slab = atoms_of(d, d.pos)[slab_mask]
        slab.set_constraint(FixAtoms(mask=d.fixed.numpy()[slab_mask]))
        slab.calc = EMT()
        FIRE(slab, maxstep=0.2, logfile=None).run(fmax=0.01, steps=1000)
        e_gas = sum(ref[s] for s in atoms_of(d, d.pos)[~slab_mask].get_chemical_symbols())
        e_relaxed, _ = emt(atoms_of(d, d.pos_relaxed))
        e_init, _ = emt(atoms_of(d, d.pos))
        assert d.y_relaxed == pytest.approx(e_relaxed - slab.get_potential_energy() - e_gas, abs=1e-2)
        assert d.y_init - d.y_relaxed == pytest.approx(e_init - e_relaxed, abs=2e-3)


def test_deterministic_and_independent_of_workers(world):
    """Systems rebuilt in this process (the fixture used 2 workers) are identical, field by
    field and bit for bit. (Not the pickled bytes: a pickled torch tensor embeds the
    memory address of its storage, so no two runs give the same bytes.)"""
    for split in ("train", "val_ood_ads"):
        stored = is2re(world, split)
        again = demo.to_is2re(demo.make_system(demo.Task(split, 0, 0, 5)), int(stored[0].sid))
        assert sorted(again.keys()) == sorted(stored[0].keys())
        for field in again.keys():
            a, b = stored[0][field], again[field]
            assert torch.equal(a, b) if torch.is_tensor(a) else a == b, (split, field)
    other = demo.make_system(demo.Task("train", 0, 1, 5))
    assert not np.array_equal(other["pos"], stored[0].pos.numpy())


def test_reuse_and_refusals(world, tmp_path, capsys):
    before = (world.path / "is2re" / "train" / "data.lmdb").stat().st_mtime_ns
    summary = demo.main(["--out", str(world.path), "--small"])
    assert "entries" in capsys.readouterr().out
    assert summary == json.loads((world.path / "summary.json").read_text())
    assert (world.path / "is2re" / "train" / "data.lmdb").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="--force"):
        demo.make_demo(world.path, small=True, seed=1)
    (tmp_path / "foreign").mkdir()
    with pytest.raises(FileExistsError, match="summary.json"):
        demo.make_demo(tmp_path / "foreign", small=True)


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(task):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(demo, "make_system", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        demo.make_demo(tmp_path / "out", num_systems=2, workers=1, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [".out.lock"]  # the (empty) build lock alone: no half-built world


@pytest.mark.parametrize("facet", sorted(demo.FACETS))
def test_slab_tags_and_adsorbate_placement(facet, monkeypatch):
    """The surface (tag 1) lies above the subsurface; the lowered adsorbate touches the
    slab (minimum image) first with a binding atom at 1.8-2.2 A or another atom at 2.5 A."""
    monkeypatch.setattr(demo, "FACETS", {facet: demo.FACETS[facet]})
    adsorbates = demo.load_adsorbates()
    for i in range(4):
        rng = np.random.default_rng(i)
        slab, _ = demo.build_slab(rng, ("Cu", "Pt"))
        tags, z = slab.get_tags(), slab.positions[:, 2]
        assert 0.4 <= tags.mean() <= 0.6 and z[tags == 1].min() > z[tags == 0].max()
        ads = adsorbates[rng.integers(len(adsorbates))]
        site, _ = demo.surface_sites(slab, rng)
        system = demo.place_adsorbate(slab, ads, site, rng)
        is_ads = system.get_tags() == 2
        dist = system.get_all_distances(mic=True)[np.ix_(is_ads, ~is_ads)].min(axis=1)
        binding = np.isin(np.arange(len(ads.atoms)), ads.binding)
        assert dist[binding].min() >= 1.8 - 1e-6 and dist[~binding].min(initial=9.0) >= 2.5 - 1e-6
        assert dist[binding].min() <= 2.2 + 1e-6 or abs(dist[~binding].min() - 2.5) < 1e-6


def test_a_second_build_of_a_folder_waits_for_the_first(tmp_path, capsys):
    """make_demo holds build_lock: a concurrent build of the same folder waits, then reuses it."""
    out, order = tmp_path / "demo", []

    def second():
        with demo.build_lock(out):
            order.append("second")

    with demo.build_lock(out):
        waiting = threading.Thread(target=second)
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive()  # blocked while the first holds the lock
        order.append("first")
    waiting.join(10)
    assert order == ["first", "second"] and "waiting for another process building" in capsys.readouterr().out
