"""The relaxation benchmark runs end to end (EMT and the tiny model, a few steps) and writes JSON."""

import json

from sfm.relax.bench import main


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    rows = main(["--model", "emt", "--n", "2", "--steps", "5", "--json", str(out)])
    rows += main(["--model", "tiny", "--n", "2", "--steps", "2", "--fmax", "0", "--max_atoms", "40"])
    assert json.loads(out.read_text())["results"][0]["n"] == 2
    for r in rows:
        assert r["ratio"] > 0 and r["max_dE_per_atom"] < 1e-3
        assert r["steps_batched"] == r["steps_ase"]
