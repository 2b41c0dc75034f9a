"""The benchmark runs (a smoke test; its timings are not checked)."""

from sfm.models.bench import bench_one, synthetic_slabs


def test_synthetic_slabs_are_oc20_sized():
    batch = synthetic_slabs()
    assert batch.num_graphs == 4 and batch.num_nodes == 320
    assert batch.cell.shape == (4, 3, 3) and 25 < float(batch.cell[0, 2, 2]) < 35  # vacuum
    assert 0 < int(batch.fixed.sum()) < 320


def test_bench_one_reports_times_and_memory():
    result = bench_one("tiny", "cpu", repeats=1, preset_graph=True, bf16=False)
    assert result["params"] > 0 and result["edges"] > 0
    assert result["forward_s"] > 0 and result["train_step_s"] > 0
    assert {"peak_mb_forward", "peak_mb_train_step"} <= set(result)


def test_profile_names_the_ops_of_forward_and_backward():
    result = bench_one("tiny", "cpu", repeats=1, preset_graph=True, bf16=False, profile=True, num_layers=1)
    assert result["train_over_forward"] > 0
    for part in ("forward", "train_forward", "backward"):
        prof = result["profile"][part]
        assert prof["total_s"] > 0 and len(prof["ops"]) > 0
        assert all(op["self_s"] <= prof["total_s"] and op["calls"] >= 1 for op in prof["ops"])
    assert any("mm" in op["op"] for op in result["profile"]["backward"]["ops"])
