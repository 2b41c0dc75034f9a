"""sfm.data.convert: OC20 LMDB <-> ase.db <-> extxyz round trips, splits, atomic writes."""

import pytest
import torch

from sfm.data import LmdbDataset, open_dataset, write_lmdb
from sfm.data.convert import main

XYZ_ATOL = 1e-8  # ASE's extxyz writer keeps per-atom floats to 8 decimals


def assert_same_fields(got, want, atol=0.0, ignore=()):
    """Same field names and values; per-atom floats within ``atol`` (0: bit for bit)."""
    assert set(got.keys()) == set(want.keys()) - set(ignore)
    for name in got.keys():
        a, b = got[name], want[name]
        if torch.is_tensor(b) and b.numel() == 1 and not torch.is_tensor(a):
            b = b.item()
        if torch.is_tensor(a):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert torch.allclose(a, b, rtol=0, atol=atol) if a.is_floating_point() else torch.equal(a, b), name
        else:
            assert a == b and type(a) is type(b), name


@pytest.fixture
def oc20(tmp_path, make_structure):
    """An OC20 LMDB of 6 S2EF entries that also carry IS2RE fields and a stored graph."""
    items = []
    for i in range(6):
        d = make_structure(i, natoms=8 + i, s2ef=True)
        d.y_relaxed, d.pos_relaxed = 0.25 * i, d.pos + 0.1
        d.edge_index = torch.zeros(2, 4, dtype=torch.long)
        items.append(d)
    write_lmdb(tmp_path / "oc20.lmdb", items)
    return tmp_path / "oc20.lmdb"


@pytest.mark.parametrize("suffix, atol", [(".aselmdb", 0.0), (".db", 0.0), (".json", 0.0), (".extxyz", XYZ_ATOL)])
def test_round_trip_keeps_every_field_both_formats_hold(oc20, tmp_path, capsys, suffix, atol):
    out = main([str(oc20), "--out", str(tmp_path / f"x{suffix}")])
    assert out["dropped"] == ["edge_index"] and "left out" in capsys.readouterr().out
    main([str(tmp_path / f"x{suffix}"), "--out", str(tmp_path / "back.lmdb")])
    want, mid, back = LmdbDataset(oc20), open_dataset(tmp_path / f"x{suffix}"), LmdbDataset(tmp_path / "back.lmdb")
    assert len(mid) == len(back) == len(want) == 6
    for i in range(6):
        assert_same_fields(mid[i], want[i], atol, ignore=("edge_index",))
        assert_same_fields(back[i], want[i], atol, ignore=("edge_index",))


def test_split_by_fraction_and_by_sid_list(oc20, tmp_path):
    out = tmp_path / "mine" / "data.aselmdb"
    main([str(oc20), "--out", str(out), "--split", "train=0.5,val_id=0.5", "--seed", "3"])
    train, val = open_dataset(tmp_path / "mine" / "train" / "data.aselmdb"), open_dataset(tmp_path / "mine" / "val_id")
    sids = [int(d.sid) for d in train] + [int(d.sid) for d in val]
    assert len(train) == len(val) == 3 and sorted(sids) == list(range(6))
    (tmp_path / "a.txt").write_text("4\n# a comment\n1\n")
    (tmp_path / "b.txt").write_text("0\n")
    main(
        [
            str(oc20),
            "--out",
            str(tmp_path / "by_sid" / "s.extxyz"),
            "--split",
            f"a={tmp_path / 'a.txt'},b={tmp_path / 'b.txt'}",
        ]
    )
    assert [d.sid for d in open_dataset(tmp_path / "by_sid" / "a" / "s.extxyz")] == [1, 4]
    assert [d.sid for d in open_dataset(tmp_path / "by_sid" / "b" / "s.extxyz")] == [0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--split", "train=0.7,val=0.7"], "sum to at most 1"),
        (["--split", "train=0.01"], "would be empty"),
        (["--split", "train"], "expected NAME=FRACTION"),
    ],
)
def test_bad_splits_are_refused(oc20, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        main([str(oc20), "--out", str(tmp_path / "o.lmdb"), *flags])
    assert message in capsys.readouterr().err
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["oc20.lmdb"]


def test_nothing_written_when_an_entry_fails(oc20, tmp_path, capsys, make_structure):
    bad = make_structure(9)
    bad.pos[3, 0] = float("nan")
    write_lmdb(tmp_path / "bad.lmdb", [bad])
    for suffix in (".lmdb", ".aselmdb", ".extxyz"):
        with pytest.raises(SystemExit):
            main(
                [
                    str(oc20),
                    str(tmp_path / "bad.lmdb"),
                    "--out",
                    str(tmp_path / "out" / f"o{suffix}"),
                    "--split",
                    "a=0.5,b=0.5",
                ]
            )
        assert "bad.lmdb[0] (sid 9): pos has NaN" in capsys.readouterr().err
        assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []
    with pytest.raises(SystemExit):
        main([str(oc20), "--out", str(tmp_path / "o.cif")])
    assert "unknown output format" in capsys.readouterr().err
