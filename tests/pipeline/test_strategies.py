"""ZeRO 1/2/3 with two processes on CPU (torchrun, gloo) against the one-process run.

Two ranks with 2 structures each see, step for step, the same 4 structures as one process
with 4 (DistributedSampler interleaves one shuffled order), so the trained weights, the
training losses and the validation losses must agree with the Single run's. Steps: 4, two
epochs, validation with the EMA at each epoch end, checkpoints every 2 steps.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import trainer_toy

from sfm.pipeline.checkpoint import read_consolidated

ROOT = Path(__file__).resolve().parents[2]
COMMON = [
    "--total_num_steps",
    "4",
    "--n_train",
    "8",
    "--n_valid",
    "4",
    "--val_batch_size",
    "4",
    "--warmup_num_steps",
    "1",
    "--max_lr",
    "3e-3",
    "--log_interval",
    "1",
    "--save_interval",
    "2",
    "--keep_checkpoints",
    "0",
    "--ema_decay",
    "0.5",
]


def torchrun(save_dir, strategy, extra=()):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        trainer_toy.__file__,
        "--strategy",
        strategy,
        "--save_dir",
        str(save_dir),
        "--train_batch_size",
        "2",
        *COMMON,
        *extra,
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r


def records(save_dir, split):
    return [r for r in map(json.loads, open(Path(save_dir) / "metrics.jsonl")) if r["split"] == split]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process, 4 structures a step."""
    save_dir = tmp_path_factory.mktemp("single") / "run"
    trainer_toy.main(["--strategy", "Single", "--save_dir", str(save_dir), "--train_batch_size", "4", *COMMON])
    return save_dir


def assert_same_run(save_dir, reference):
    a, b = read_consolidated(Path(save_dir) / "model.pt"), read_consolidated(Path(reference) / "model.pt")
    for k in b["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-4, atol=1e-5)
    for split in ("train", "valid"):
        got, want = records(save_dir, split), records(reference, split)
        assert [r["step"] for r in got] == [r["step"] for r in want]
        assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-4)
    assert a["config"]["world_size"] == 2 and a["config"]["global_batch_size"] == 4


@pytest.mark.parametrize("strategy", ["Zero1", "Zero3"])
def test_two_processes_match_one(tmp_path, single, strategy):
    torchrun(tmp_path / "run", strategy)
    assert_same_run(tmp_path / "run", single)


def test_zero2_two_processes_match_one_and_resume(tmp_path, single):
    """Zero2 matches Single; killed after its step-2 checkpoint and resumed, it reproduces itself exactly."""
    a, b = tmp_path / "a", tmp_path / "b"
    torchrun(a, "Zero2")
    assert_same_run(a, single)
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "step_0000004")
    (b / "checkpoints" / "latest").write_text("step_0000002\n")
    lines = [line for line in open(a / "metrics.jsonl") if json.loads(line)["step"] <= 2]
    (b / "metrics.jsonl").write_text("".join(lines))
    (b / "model.pt").unlink()
    torchrun(b, "Zero2", ["--resume", "auto"])
    for split in ("train", "valid"):
        assert [(r["step"], r["loss"]) for r in records(b, split)] == [
            (r["step"], r["loss"]) for r in records(a, split)
        ]
    sa, sb = read_consolidated(a / "model.pt")["state_dict"], read_consolidated(b / "model.pt")["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
