import json

from sfm.data.bench_loader import main


def test_bench_loader_runs(lmdb_file, tmp_path, capsys):
    result = main(["--data", str(lmdb_file), "--workers", "0", "--batch-size", "2", "--json", str(tmp_path / "b.json")])
    assert "structures/s" in capsys.readouterr().out
    (row,) = result["rows"]
    assert row["workers"] == 0 and row["structures"] == 3 and row["structures_per_s"] > 0  # first batch not timed
    # every atom has >= 20 neighbours in 12 A: the cap keeps 20, and more only on a tie
    assert 20 * (10 + 11 + 12) / 3 <= row["edges_per_structure"] < 21 * (10 + 11 + 12) / 3
    assert json.loads((tmp_path / "b.json").read_text())["rows"][0]["structures"] == 3


def test_bench_loader_measures_the_same_structures_as_aselmdb(lmdb_file, capsys):
    result = main(["--data", str(lmdb_file), "--workers", "0", "--batch-size", "1", "--also", "aselmdb", "extxyz"])
    assert [(r["format"], r["structures"]) for r in result["rows"]] == [
        ("LmdbDataset", 4),
        ("aselmdb", 4),
        ("extxyz", 4),
    ]
    assert len({r["edges_per_structure"] for r in result["rows"]}) == 1  # the same structures, the same graphs
    assert "aselmdb" in capsys.readouterr().out
