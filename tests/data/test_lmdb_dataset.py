import pickle
import subprocess
import sys

import lmdb
import pytest
import torch
from torch_geometric.data import Data

from sfm.data import LmdbDataset, LmdbWriter, write_lmdb


def _raw_put(path, items):
    """Write raw key/value bytes to an LMDB file the way other OC20 tools do."""
    env = lmdb.open(str(path), subdir=False, map_size=1 << 30, lock=False)
    with env.begin(write=True) as txn:
        for key, value in items:
            txn.put(key, value)
    env.close()


def test_roundtrip_fields_and_dtypes(lmdb_file, make_structure):
    ds = LmdbDataset(lmdb_file)
    assert len(ds) == 5
    for i in range(5):
        ref, got = make_structure(i, natoms=8 + i), ds[i]
        assert got.sid == i and got.natoms == 8 + i
        assert got.cell.shape == (1, 3, 3) and got.pos.shape == (8 + i, 3)
        assert got.atomic_numbers.dtype == torch.long and got.tags.dtype == torch.long
        assert torch.equal(got.atomic_numbers, ref.atomic_numbers.long())
        for field in ("pos", "cell", "pos_relaxed", "tags"):
            assert torch.equal(got[field], ref[field]), field
        assert got.y_init == ref.y_init and got.y_relaxed == ref.y_relaxed
    assert ds[-1].sid == 4
    with pytest.raises(IndexError):
        ds[5]


def test_folder_of_s2ef_shards_with_length_key(tmp_path, make_structure):
    write_lmdb(tmp_path / "a.lmdb", [make_structure(i, s2ef=True) for i in range(3)])
    # keys out of order and a non-integer key, as in published S2EF shards
    entries = [make_structure(10 + i, s2ef=True) for i in range(12)]
    _raw_put(
        tmp_path / "b.lmdb",
        [(str(i).encode(), pickle.dumps(d)) for i, d in reversed(list(enumerate(entries)))]
        + [(b"length", pickle.dumps(12))],
    )
    ds = LmdbDataset(tmp_path)
    assert len(ds) == 15
    assert [ds[i].sid for i in range(15)] == [0, 1, 2] + list(range(10, 22))
    got = ds[4]
    assert got.fixed.dtype == torch.bool and torch.equal(got.fixed, got.tags == 0)
    assert torch.equal(got.force, entries[1].force) and got.y == entries[1].y


def test_reads_pyg1_legacy_pickles(tmp_path, make_structure):
    ref = make_structure(7)
    legacy = Data.__new__(Data)  # PyG 1.x objects pickle their fields straight into __dict__
    legacy.__dict__.update({k: ref[k] for k in ref.keys()})
    legacy.__dict__.update(x=None, edge_attr=None, __num_nodes__=None)
    raw = pickle.dumps(legacy)
    assert b"_store" not in raw
    with pytest.raises(RuntimeError):  # what a naive reader hits under PyG 2
        pickle.loads(raw).pos
    _raw_put(tmp_path / "legacy.lmdb", [(b"0", raw)])
    got = LmdbDataset(tmp_path / "legacy.lmdb")[0]
    assert torch.equal(got.pos, ref.pos) and got.sid == 7 and got.num_nodes == ref.natoms
    assert "x" not in got and "__num_nodes__" not in got.keys()


def test_pickle_and_multiworker_loader(lmdb_file):
    ds = LmdbDataset(lmdb_file)
    ds[0]  # opens the environment in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[3].sid == 3 and LmdbDataset(lmdb_file)[2].sid == 2
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert sorted(d.sid for d in loader) == list(range(5))


def test_write_is_atomic(tmp_path, make_structure):
    path = tmp_path / "out.lmdb"

    def failing():
        yield make_structure(0)
        raise RuntimeError("generator broke")

    with pytest.raises(RuntimeError):
        write_lmdb(path, failing())
    assert list(tmp_path.iterdir()) == []
    write_lmdb(path, [make_structure(1)])
    with pytest.raises(RuntimeError):
        write_lmdb(path, failing())
    assert [d.sid for d in LmdbDataset(path)] == [1]  # old file untouched
    assert list(tmp_path.iterdir()) == [path]


def test_append_writer_continues_and_keeps_commits(tmp_path, make_structure):
    path = tmp_path / "stream.lmdb"
    with LmdbWriter(path, append=True) as w:
        w.append(make_structure(0))
    with pytest.raises(RuntimeError):
        with LmdbWriter(path, append=True) as w:
            w.append(make_structure(1))
            raise RuntimeError("sampler crashed")
    assert [d.sid for d in LmdbDataset(path)] == [0, 1]
    # a hard crash (no clean exit) keeps what was committed
    code = (
        "import os, sys; sys.path.insert(0, '.'); from tests.conftest import oc20_like; from sfm.data import LmdbWriter\n"
        f"w = LmdbWriter({str(path)!r}, append=True, commit_every=4).__enter__()\n"
        "for i in range(10): w.append(oc20_like(100 + i))\n"
        "os._exit(3)\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 3
    sids = [d.sid for d in LmdbDataset(path)]
    assert sids == [0, 1] + list(range(100, 108))


def test_missing_path_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LmdbDataset(tmp_path / "nope.lmdb")
    with pytest.raises(FileNotFoundError, match=r"no \*\.lmdb"):
        LmdbDataset(tmp_path)
    write_lmdb(tmp_path / "empty.lmdb", [])
    with pytest.raises(ValueError, match="no entries"):
        LmdbDataset(tmp_path / "empty.lmdb")


def _dataset_with(tmp_path, data):
    write_lmdb(tmp_path / "bad.lmdb", [data])
    return LmdbDataset(tmp_path / "bad.lmdb")


def test_missing_field_names_index_sid_and_field(tmp_path, make_structure):
    data = make_structure(42)
    del data.tags
    with pytest.raises(ValueError, match=r"bad\.lmdb\[0\] \(sid 42\).*missing.*'tags'"):
        _dataset_with(tmp_path, data)[0]


@pytest.mark.parametrize(
    "cell, message",
    [
        ([[5.0, 0, 0], [0, 5, 0], [10, 0, 0]], "singular"),
        ([[5.0, 0, 0], [0, 5, 0], [0, 0, -20]], "left-handed"),
        ([[5.0, 0, 0], [0, float("nan"), 0], [0, 0, 20]], "non-finite"),
    ],
)
def test_bad_cells(tmp_path, make_structure, cell, message):
    data = make_structure(3)
    data.cell = torch.tensor([cell])
    with pytest.raises(ValueError, match=rf"sid 3.*cell.*{message}"):
        _dataset_with(tmp_path, data)[0]


def test_nan_positions_and_natoms_mismatch(tmp_path, make_structure):
    data = make_structure(5)
    data.pos[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"sid 5.*pos has NaN/inf at atom\(s\) \[2\]"):
        _dataset_with(tmp_path, data)[0]
    data = make_structure(6)
    data.natoms = 99
    with pytest.raises(ValueError, match="natoms=99"):
        _dataset_with(tmp_path, data)[0]


def test_truncated_empty_and_foreign_files_are_named_before_reading(tmp_path, make_structure):
    """A file cut short would crash the process with SIGBUS while keys are listed: refused
    from its header first, naming the file (alone, and as one shard of a folder)."""
    write_lmdb(tmp_path / "whole.lmdb", [make_structure(i, natoms=40) for i in range(50)])
    raw = (tmp_path / "whole.lmdb").read_bytes()
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.lmdb").write_bytes(raw)
    (shards / "b.lmdb").write_bytes(raw[: len(raw) // 2])  # a shard missing its tail
    with pytest.raises(
        ValueError,
        match=rf"b\.lmdb: truncated: {len(raw) // 2} bytes, but its LMDB header says "
        rf"{len(raw)}",
    ):
        LmdbDataset(shards)
    (tmp_path / "cut.lmdb").write_bytes(raw[:3000])  # shorter than the second meta page
    with pytest.raises(ValueError, match=r"cut\.lmdb: truncated: 3000 bytes"):
        LmdbDataset(tmp_path / "cut.lmdb")
    (shards / "b.lmdb").write_bytes(b"")
    with pytest.raises(ValueError, match=r"b\.lmdb: the file is empty \(0 bytes\)"):
        LmdbDataset(shards)
    (shards / "b.lmdb").write_bytes(b"not lmdb at all" * 100)
    with pytest.raises(ValueError, match=r"b\.lmdb: not an LMDB file"):
        LmdbDataset(shards)


def test_corrupt_value_names_file_key_and_index(tmp_path, make_structure):
    shards = tmp_path / "shards"
    write_lmdb(shards / "a.lmdb", [make_structure(i) for i in range(3)])
    write_lmdb(shards / "b.lmdb", [make_structure(i) for i in range(3, 6)])
    env = lmdb.open(str(shards / "b.lmdb"), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"1", bytes(range(7, 200)))  # random bytes instead of a pickle
    env.close()
    dataset = LmdbDataset(shards)
    assert int(dataset[3].sid) == 3
    with pytest.raises(
        ValueError,
        match=r"b\.lmdb\[1\] \(entry 4 of .*shards\): the value is not a readable pickle "
        r"\(UnpicklingError",
    ):
        dataset[4]
