"""Training and sampling sets from a dense split (sfm.data.dense_targets): the targets are the
lowest-energy valid configurations, each placement is paired with the nearest one (checked with
ASE's minimum image), the fields are the dense entry's, bad input is named and nothing is written."""

import json

import numpy as np
import pytest
import torch
from ase.geometry import find_mic

from sfm.data import LmdbDataset, write_lmdb
from sfm.data.demo import to_is2re
from sfm.data.dense_reference import ADSORBML_EXCLUDE, reference
from sfm.data.dense_targets import main, targets, write_low_energy, write_placements

CELL = np.array([[8.0, 0.0, 0.0], [4.0, 7.0, 0.0], [0.0, 0.0, 20.0]])  # oblique: minimum image is not per axis
SLAB = np.array([[0.0, 0.0, 5.0], [4.0, 0.0, 5.0], [2.0, 3.5, 7.0], [6.0, 3.5, 7.0]])


def config(source, y, anomalies=()):
    return {"config_id": source, "source": source, "site": None, "y_init": y + 1.0, "y_relaxed": y,
            "steps": 10, "anomalies": list(anomalies)}  # fmt: skip


def system(sid, rng, configs):
    """``(mapping record, entries)`` of one system: 4 slab atoms, a 2-atom adsorbate placed at
    random, its relaxed position a random shift away."""
    entries = []
    for idx, c in enumerate(configs):
        ads = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.1]]) + [*rng.uniform(0, 8, 2), 9.0]
        moved = ads + [*rng.uniform(-3, 3, 2), 0.0]
        data = to_is2re(
            {
                "atomic_numbers": np.array([29, 29, 29, 29, 6, 8]),
                "cell": CELL,
                "tags": np.array([0, 0, 1, 1, 2, 2]),
                "pos": np.vstack([SLAB, ads]),
                "pos_relaxed": np.vstack([SLAB + rng.normal(0, 0.05, SLAB.shape), moved]),
                "y_init": c["y_init"],
                "y_relaxed": c["y_relaxed"],
            },
            sid,
        )
        data.config_idx = idx
        entries.append(data)
    return {"split": "train", "catalyst": "Cu", "facet": "111", "adsorbate": "*CO", "e_slab": -1.0,
            "e_gas": -2.0, "configs": configs}, entries  # fmt: skip


@pytest.fixture
def dense(tmp_path):
    """A dense train split of three systems; sid 2 has no valid placement."""
    rng = np.random.default_rng(0)
    specs = {
        0: [config("heuristic", -1.0, ["dissociated"]), config("heuristic", -2.0, ["desorbed"]),
            config("random", -1.5, ["unconverged"]), config("random", -0.95), config("heuristic", -0.5),
            config("random", -1.02), config("demo", -0.3)],
        1: [config("heuristic", -0.1), config("random", -0.25), config("demo", -0.21)],
        2: [config("heuristic", -3.0, ["desorbed"]), config("demo", -1.0, ["surface_changed"])],
    }  # fmt: skip
    mapping, entries = {}, []
    for sid, configs in specs.items():
        mapping[str(sid)], rows = system(sid, rng, configs)
        entries += rows
    root = tmp_path / "dense"
    write_lmdb(root / "train" / "data.lmdb", entries)
    (root / "mapping.json").write_text(json.dumps(mapping))
    return root, mapping, entries


def test_targets_are_the_lowest_valid_configurations_within_the_margin(dense):
    _, mapping, _ = dense
    record = mapping["0"]
    # valid: -1.0 (dissociated is kept by default), -0.95, -0.5, -1.02, -0.3; reference -1.02
    assert reference(record)["y_relaxed"] == -1.02
    assert targets(record, best=4, within=0.1) == [5, 0, 3]
    assert targets(record, best=2, within=0.1) == [5, 0]
    assert targets(record, best=9, within=0.6) == [5, 0, 3, 4]
    assert targets(record, best=4, within=0.1, exclude=ADSORBML_EXCLUDE) == [5, 3]
    assert targets(mapping["1"], best=1, within=1.0) == [1]
    assert targets(mapping["2"], best=4, within=0.1) == []  # no reference
    with pytest.raises(ValueError, match="best must be >= 1"):
        targets(record, best=0, within=0.1)


def test_low_energy_entries_pair_each_placement_with_its_nearest_target(dense, tmp_path):
    root, mapping, entries = dense
    counts = write_low_energy(root, "train", tmp_path / "le.lmdb", best=4, within=0.1)
    assert counts == {"systems": 2, "entries": 7 + 3, "systems_without_reference": 1, "targets_per_system": 2.5}
    out = list(LmdbDataset(tmp_path / "le.lmdb"))
    assert [(int(d.sid), int(d.config_idx)) for d in out] == [(0, i) for i in range(7)] + [(1, i) for i in range(3)]
    for d in out:
        sid, idx = int(d.sid), int(d.config_idx)
        source = entries[idx if sid == 0 else 7 + idx]
        chosen = targets(mapping[str(sid)], 4, 0.1)
        # nearest target by the adsorbate's mean minimum-image distance, computed with ASE
        ads = source.tags.numpy() == 2
        dist = {}
        for t in chosen:
            target = entries[t if sid == 0 else 7 + t]
            vec = target.pos_relaxed.double().numpy()[ads] - source.pos.double().numpy()[ads]
            dist[t] = find_mic(vec, CELL, pbc=True)[1].mean()
        assert int(d.target_idx) == min(dist, key=dist.get)
        target = entries[int(d.target_idx) if sid == 0 else 7 + int(d.target_idx)]
        assert torch.equal(d.pos_relaxed, target.pos_relaxed) and d.y_relaxed == target.y_relaxed
        assert d.y_relaxed == mapping[str(sid)]["configs"][int(d.target_idx)]["y_relaxed"]
        for key in ("pos", "atomic_numbers", "cell", "tags", "fixed", "natoms", "y_init"):
            assert torch.equal(torch.as_tensor(d[key]), torch.as_tensor(source[key])), key
    assert {int(d.target_idx) for d in out if int(d.sid) == 1} <= {1, 2}  # within 0.1 eV of -0.25: -0.25, -0.21


def test_placements_of_one_source_in_stored_order(dense, tmp_path):
    root, _, entries = dense
    assert write_placements(root, "train", tmp_path / "h.lmdb") == {"systems": 3, "entries": 5, "per_system": [1, 3]}
    got = [(int(d.sid), int(d.config_idx)) for d in LmdbDataset(tmp_path / "h.lmdb")]
    assert got == [(0, 0), (0, 1), (0, 4), (1, 0), (2, 0)]
    assert all(
        torch.equal(d.pos, entries[{0: 0, 1: 7, 2: 10}[int(d.sid)] + int(d.config_idx)].pos)
        for d in LmdbDataset(tmp_path / "h.lmdb")
    )
    with pytest.raises(ValueError, match="unknown placement source 'grid'"):
        write_placements(root, "train", tmp_path / "x.lmdb", "grid")


def test_bad_input_is_named_and_nothing_is_written(dense, tmp_path):
    root, mapping, _ = dense
    out = tmp_path / "out.lmdb"
    with pytest.raises(FileNotFoundError, match="no dense split here"):
        write_low_energy(tmp_path / "nowhere", "train", out)
    with pytest.raises(FileNotFoundError, match="val_id"):
        write_low_energy(root, "val_id", out)
    bad = dict(mapping)
    bad["1"] = {**mapping["1"], "configs": mapping["1"]["configs"][:2]}
    (root / "mapping.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="sid 1 has entries for configs"):
        write_low_energy(root, "train", out)
    del bad["1"]
    (root / "mapping.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="sid 1 has no record"):
        write_placements(root, "train", out)
    (root / "mapping.json").write_text(json.dumps({k: {**v, "split": "val_id"} for k, v in mapping.items()}))
    with pytest.raises(ValueError, match="sid 0 is in split 'val_id'"):
        write_low_energy(root, "train", out)
    only_invalid = {
        k: {**v, "configs": [{**c, "anomalies": ["desorbed"]} for c in v["configs"]]} for k, v in mapping.items()
    }
    (root / "mapping.json").write_text(json.dumps(only_invalid))
    with pytest.raises(ValueError, match="no system has a valid reference"):
        write_low_energy(root, "train", out)
    assert not out.exists() and not list(tmp_path.glob("out.lmdb*"))


def test_cli(dense, tmp_path, capsys):
    root, _, _ = dense
    counts = main(
        ["low_energy", "--dense", str(root), "--split", "train", "--out", str(tmp_path / "a.lmdb"), "--best", "1"]
    )
    assert counts["targets_per_system"] == 1.0 and '"entries": 10' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["placements", "--dense", str(tmp_path), "--split", "train", "--out", str(tmp_path / "b.lmdb")])
    assert "no dense split here" in capsys.readouterr().err


def test_on_a_built_dense_split(dense_world, tmp_path):
    """The real layout: every target is a valid configuration's relaxed structure of its system."""
    root = dense_world / "is2re_dense"
    write_low_energy(root, "test_id", tmp_path / "le.lmdb")
    mapping = json.loads((root / "mapping.json").read_text())
    dense = {(int(d.sid), int(d.config_idx)): d for d in LmdbDataset(root / "test_id" / "data.lmdb")}
    for d in LmdbDataset(tmp_path / "le.lmdb"):
        sid, target = int(d.sid), int(d.target_idx)
        assert target in targets(mapping[str(sid)], 4, 0.1)
        assert torch.equal(d.pos_relaxed, dense[(sid, target)].pos_relaxed)
        assert torch.equal(d.pos, dense[(sid, int(d.config_idx))].pos)
