"""The dense split (sfm.data.dense): layout, counts, energies and relaxed structures checked with
ASE's EMT directly, the AdsorbML minimum, caching and determinism."""

import json
import shutil

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from sfm.data import LmdbDataset, demo, emt_world
from sfm.data.anomaly import KINDS
from sfm.data.dense import DENSE_SPLITS, DenseConfig, make_dense
from sfm.data.dense_reference import ADSORBML_EXCLUDE, EXCLUDE, reference


def atoms_of(d, pos):
    atoms = Atoms(
        numbers=d.atomic_numbers.numpy(),
        positions=pos.double().numpy(),
        cell=d.cell[0].double().numpy(),
        tags=d.tags.numpy(),
        pbc=True,
    )
    atoms.set_constraint(FixAtoms(mask=d.tags.numpy() == 0))
    atoms.calc = EMT()
    return atoms


@pytest.fixture(scope="module")
def dense(dense_world):
    root = dense_world / "is2re_dense"
    mapping = json.loads((root / "mapping.json").read_text())
    entries = {split: list(LmdbDataset(root / split / "data.lmdb")) for split in DENSE_SPLITS}
    return root, mapping, entries


def test_layout_and_counts(dense_world, dense):
    root, mapping, entries = dense
    summary = json.loads((root / "summary.json").read_text())
    config = {"num_val": 1, "num_train": 1, "max_sites": 2, "num_random": 2, "seed": 0, "num_test": None, "version": 2}
    assert summary["config"] == config
    world = {split: LmdbDataset(dense_world / "is2re" / split / "data.lmdb") for split in DENSE_SPLITS}
    expect = {
        "test_id": [int(d.sid) for d in world["test_id"]],
        "val_id": [int(world["val_id"][0].sid)],
        "train": [int(world["train"][0].sid)],
    }
    demo_map = json.loads((dense_world / "data_mapping.json").read_text())
    for split in DENSE_SPLITS:
        sids = [int(s) for s, r in mapping.items() if r["split"] == split]
        assert sids == expect[split]
        assert summary[split]["systems"] == len(sids)
        assert [int(d.sid) for d in entries[split]] == [s for s in sids for _ in mapping[str(s)]["configs"]]
        for sid in sids:
            rec = mapping[str(sid)]
            assert rec["adsorbate"] == demo_map[str(sid)]["adsorbate"]
            ids = [c["config_id"] for c in rec["configs"]]
            n_heur = sum(c["source"] == "heuristic" for c in rec["configs"])
            assert 1 <= n_heur <= 2
            assert ids == [f"heur{i}" for i in range(n_heur)] + ["rand0", "rand1", "demo"]
            ours = [d for d in entries[split] if int(d.sid) == sid]
            assert [int(d.config_idx) for d in ours] == list(range(len(ids)))


def test_energies_and_structures_against_emt(dense_world, dense):
    _, mapping, entries = dense
    world = {int(d.sid): d for d in LmdbDataset(dense_world / "is2re" / "test_id" / "data.lmdb")}
    for d in entries["test_id"]:
        rec = mapping[str(int(d.sid))]
        conf = rec["configs"][int(d.config_idx)]
        relaxed = atoms_of(d, d.pos_relaxed)
        offset = rec["e_slab"] + rec["e_gas"]
        # float32 positions: energies agree to ~1e-4 eV
        assert relaxed.get_potential_energy() - offset == pytest.approx(conf["y_relaxed"], abs=2e-3)
        assert atoms_of(d, d.pos).get_potential_energy() - offset == pytest.approx(conf["y_init"], abs=2e-3)
        fixed = d.tags == 0
        assert np.abs((d.pos_relaxed - d.pos)[fixed].numpy()).max() < 1e-4
        if "unconverged" not in conf["anomalies"]:
            assert np.linalg.norm(relaxed.get_forces(), axis=1).max() < emt_world.FMAX + 2e-3
        if conf["source"] == "demo":  # the demo world's own placement, referenced the same way
            assert conf["y_relaxed"] == pytest.approx(float(world[int(d.sid)].y_relaxed), abs=1e-6)
            assert np.allclose(d.pos_relaxed, world[int(d.sid)].pos_relaxed)
    # e_gas: the OC20 per-element references of the adsorbate's atoms
    for sid, rec in mapping.items():
        ads = next(d for d in entries[rec["split"]] if int(d.sid) == int(sid))
        symbols = Atoms(numbers=ads.atomic_numbers[ads.tags == 2].numpy()).get_chemical_symbols()
        assert rec["e_gas"] == pytest.approx(sum(emt_world.gas_references()[s] for s in symbols))


def test_reference_is_the_minimum_over_placements_not_disqualified(dense):
    _, mapping, _ = dense
    for rec in mapping.values():
        for exclude in (EXCLUDE, ADSORBML_EXCLUDE):
            ok = [
                c
                for c in rec["configs"]
                if "unconverged" not in c["anomalies"] and not set(c["anomalies"]) & set(exclude)
            ]
            best = reference(rec, exclude)
            assert best == (min(ok, key=lambda c: c["y_relaxed"]) if ok else None)
    assert "dissociated" not in EXCLUDE and set(ADSORBML_EXCLUDE) == set(KINDS)
    bad = {"anomalies": ["dissociated"], "y_relaxed": -9.0}
    fine = {"anomalies": [], "y_relaxed": -1.0}
    assert reference({"configs": [bad, fine]}) is bad
    assert reference({"configs": [bad, fine]}, ADSORBML_EXCLUDE) is fine
    assert reference({"configs": [{"anomalies": ["unconverged"], "y_relaxed": -9.0}]}, ()) is None


def test_cached_and_independent_of_workers(dense_world, dense, tmp_path):
    root, mapping, _ = dense
    config = DenseConfig(num_val=1, num_train=1, max_sites=2, num_random=2, seed=0)
    before = (root / "mapping.json").stat().st_mtime_ns
    make_dense(dense_world, config, workers=1, progress=False)  # reused, not rebuilt
    assert (root / "mapping.json").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="dense_force"):
        make_dense(dense_world, DenseConfig(num_val=1, num_train=1, max_sites=3, num_random=2), progress=False)
    # the same build with one worker, in a copy of the world: identical records
    copy = tmp_path / "world"
    shutil.copytree(dense_world, copy, ignore=shutil.ignore_patterns("is2re_dense"))
    make_dense(copy, DenseConfig(num_val=0, num_train=0, max_sites=2, num_random=2), workers=1, progress=False)
    again = json.loads((copy / "is2re_dense" / "mapping.json").read_text())
    for sid, rec in again.items():
        assert rec["configs"] == mapping[sid]["configs"]


def test_bad_options(tmp_path):
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path / "w"), "--dense", "--dense_sites", "-1"])
    with pytest.raises(FileNotFoundError, match="no demo world"):
        make_dense(tmp_path, progress=False)


def test_a_training_set_builds_alone_into_its_own_folder(dense_world, dense, tmp_path):
    _, mapping, _ = dense
    out = tmp_path / "dense_train"
    flags = ["--out", str(dense_world), "--num_systems", "4", "--workers", "1", "--dense", "--dense_test", "0"]
    flags += ["--dense_val", "0", "--dense_train", "1", "--dense_sites", "2", "--dense_random", "2"]
    demo.main([*flags, "--dense_out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["mapping.json", "summary.json", "train"]
    built = json.loads((out / "mapping.json").read_text())
    assert [r["split"] for r in built.values()] == ["train"]
    for sid, record in built.items():  # the same system, seed and settings: the same placements as is2re_dense's
        assert record["configs"] == mapping[sid]["configs"]
    assert len(LmdbDataset(out / "train" / "data.lmdb")) == sum(len(r["configs"]) for r in built.values())
    # a build from before num_test existed (every test_id system) is reused by a config that takes them all
    summary = json.loads((dense_world / "is2re_dense" / "summary.json").read_text())
    del summary["config"]["num_test"]
    old = tmp_path / "old"
    shutil.copytree(dense_world / "is2re_dense", old)
    (old / "summary.json").write_text(json.dumps(summary))
    config = DenseConfig(num_val=1, num_train=1, max_sites=2, num_random=2, seed=0)
    assert make_dense(dense_world, config, workers=1, progress=False, out=old) == summary
    with pytest.raises(FileExistsError, match="dense_force"):
        make_dense(dense_world, DenseConfig(1, 1, 2, 2, 0, num_test=1), progress=False, out=old)
