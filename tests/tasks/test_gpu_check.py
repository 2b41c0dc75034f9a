"""scripts/gpu_check.sh runs end to end on the CPU with tiny shapes and writes its report."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_on_cpu_with_tiny_shapes(demo_world, tmp_path):
    out = tmp_path / "check"
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "SHAPES": "tiny",
        "DEMO_DIR": str(demo_world),
        "GPUS": "0",
        "SFM_VENV": str(Path(sys.executable).parents[1]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "benchmark.json").read_text())
    bench = report["benchmarks"]
    tests = bench["device_tests"]
    assert tests["tests"] >= 5 and tests["failed"] == 0 and tests["passed"] == tests["tests"]
    (backbone,) = next(v for k, v in bench.items() if k.startswith("backbone, S2EF head"))
    (bf16,) = bench["backbone under bf16 autocast"]
    assert backbone["model"] == "tiny" and not backbone["bf16"] and bf16["bf16"]
    for row in (backbone, bf16):
        assert row["forward_s"] > 0 and row["train_step_s"] > 0 and "peak_mb_train_step" in row
    training = next(v for k, v in bench.items() if k.startswith("training throughput"))["results"]
    assert [r["strategy"] for r in training] == ["Single", "Zero1", "Zero2"]
    assert all(r["structures_per_s"] > 0 for r in training)
    sampling = bench["sampling, inpaint, ode 2 steps, one process"]
    assert sampling["samples_per_s"] > 0 and sampling["network_calls_per_sample"] == 3
    relax = next(v for k, v in bench.items() if k.startswith("relaxation"))["results"]
    assert [r["n"] for r in relax] == [2, 4] and all(r["ratio"] > 0 and r["max_dE_per_atom"] < 1e-3 for r in relax)
    assert report["machine"]["cpu_count"] >= 1
    assert "## device_tests" in (out / "benchmark.md").read_text()
