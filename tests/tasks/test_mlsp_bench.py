"""ML+SP benchmark: the true potential as the relaxer reproduces its own reference; the CLI runs
on a tiny checkpoint; a split without references is refused by name."""

import json
import statistics

import pytest
from torch_geometric.data import Data

from sfm.data import LmdbDataset, write_lmdb
from sfm.relax.emt import EMTFn
from sfm.relax.relax_structures import RelaxSettings
from sfm.tasks import mlsp_bench
from tests.tasks.test_eval_s2ef import save_tiny


def test_emt_as_the_relaxer_lands_on_the_reference(demo_world):
    report = mlsp_bench.run(
        EMTFn(), demo_world / "is2re" / "val_id", settings=RelaxSettings("lbfgs", steps=300, progress=False)
    )
    ml, initial, truth = report["rows"]
    assert ml["systems"] == truth["systems"] >= 1
    assert ml["success"] == 1.0 and ml["within_0.1"] == 1.0 and ml["median_distance"] < 0.05
    assert truth["success"] == 1.0 and truth["median_distance"] == 0.0 and truth["adwt"] == 1.0
    assert initial["median_distance"] > ml["median_distance"]  # the relaxation moved the adsorbate toward it
    per_system = report["per_system"]
    assert len(per_system["sid"]) == ml["systems"] and all(per_system["success"])
    assert max(abs(x) for x in per_system["dE"]) <= 0.1
    assert len(per_system["model_error"]) == ml["systems"]
    assert max(per_system["emt_fmax"]) <= 0.05 + 1e-6  # EMT relaxed by itself: its own minima
    median = statistics.median(per_system["emt_fmax"])  # every system succeeded
    assert report["emt_fmax_median"] == {"successful": pytest.approx(median), "failed": None}
    assert report["emt_fmax_above_3fmax"] == {"successful": 0.0, "failed": None}
    line = mlsp_bench.emt_fmax_line(report, 0.05)
    assert "successful" in line and "(above 0.15: 0%)" in line and "failed" not in line
    assert sum(per_system["steps"]) / ml["systems"] == pytest.approx(ml["steps_mean"])


def test_compare_pairs_the_common_systems():
    a = {"per_system": {"sid": ["1", "2", "3", "4"], "success": [True, True, False, True]}}
    b = {"per_system": {"sid": ["4", "3", "2", "9"], "success": [False, False, True, True]}}
    diff = mlsp_bench.compare(a, b, resamples=200)
    # common systems 2, 3, 4: a succeeds on 2 and 4, b on 2
    assert diff["systems"] == 3 and diff["success"] == pytest.approx(2 / 3)
    assert diff["difference"] == pytest.approx(1 / 3) and diff["interval_90"][0] <= 1 / 3 <= diff["interval_90"][1]
    with pytest.raises(ValueError, match="share no system"):
        mlsp_bench.compare(a, {"per_system": {"sid": ["7"], "success": [True]}})


def test_compare_two_reports_from_the_command_line(tmp_path, capsys):
    a, b, bad = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "bad.json"
    a.write_text(json.dumps({"per_system": {"sid": ["1", "2", "3"], "success": [True, True, False]}}))
    b.write_text(json.dumps({"per_system": {"sid": ["1", "2", "3"], "success": [True, False, False]}}))
    bad.write_text(json.dumps({"rows": []}))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"per_system": {"sid": ["9"], "success": [True]}}))
    diff = mlsp_bench.main(["--compare", str(a), str(b)])
    assert diff["difference"] == pytest.approx(1 / 3) and diff["systems"] == 3
    assert f"minus {b}'s on 3 common systems: +0.333" in capsys.readouterr().out
    for argv, message in (
        (["--compare", str(a), str(bad)], f"--compare {bad}: no per_system results"),
        (["--compare", str(a), str(tmp_path / "none.json")], f"--compare {tmp_path / 'none.json'}: not a readable"),
        (["--no_progress"], "--checkpoint and --data are required (unless --compare)"),
        (["--compare", str(a), str(other)], "the two ML+SP reports share no system"),
    ):
        with pytest.raises(SystemExit):
            mlsp_bench.main(argv)
        assert message in capsys.readouterr().err


def test_cli_on_a_tiny_checkpoint_and_a_split_without_references(demo_world, tmp_path, capsys):
    ckpt = save_tiny(tmp_path / "model.pt", demo_world)
    out = tmp_path / "mlsp.json"
    mlsp_bench.main(
        [
            "--checkpoint",
            str(ckpt),
            "--data",
            str(demo_world / "is2re" / "val_id"),
            "--steps",
            "3",
            "--json",
            str(out),
            "--no_progress",
        ]
    )
    assert "| model relaxation + EMT single point" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    again = mlsp_bench.main(
        ["--checkpoint", str(ckpt), "--data", str(demo_world / "is2re" / "val_id"), "--steps", "3"]
        + ["--baseline", str(out), "--no_progress"]
    )
    assert again["versus_baseline"]["difference"] == 0.0  # the same model, deterministic relaxation
    assert "ML+SP success minus" in capsys.readouterr().out
    assert 0 <= rows[0]["success"] <= 1 and rows[0]["steps_mean"] <= 3
    bare = tmp_path / "no_refs.lmdb"
    write_lmdb(
        bare,
        (
            Data(**{k: d[k] for k in d.keys() if k not in ("pos_relaxed", "y_relaxed")})
            for d in LmdbDataset(demo_world / "is2re" / "val_id")
        ),
    )
    with pytest.raises(ValueError, match="no_refs.lmdb: entries \\[0, 1\\].*pos_relaxed"):
        mlsp_bench.main(["--checkpoint", str(ckpt), "--data", str(bare), "--no_progress"])
