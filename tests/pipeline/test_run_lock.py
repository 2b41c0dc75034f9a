"""One run per save_dir (sfm/pipeline/run_lock.py), and workers that end with their torchrun launcher."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trainer_toy
from trainer_toy import ToyEnergy, toy_structures

from sfm.pipeline.run_lock import RunLock, RunLocked
from sfm.pipeline.trainer import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_run_on_the_same_save_dir_is_refused_naming_the_holder(tmp_path):
    cfg = TrainConfig(save_dir=str(tmp_path / "run"), total_num_steps=2, warmup_num_steps=1, train_batch_size=2)
    with RunLock(cfg.save_dir):  # a run in progress (here: this process)
        with pytest.raises(RunLocked, match=rf"run is in use by another run \(pid {os.getpid()} on .*run\.lock\)"):
            train(ToyEnergy(), toy_structures(4), None, cfg)
        assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything was written
    assert train(ToyEnergy(), toy_structures(4), None, cfg)["step"] == 2  # released: the folder is free again
    assert (tmp_path / "run" / "run.lock").read_text() == ""  # a finished run leaves no holder named


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_the_launcher_ends_its_workers_and_frees_the_folder(tmp_path):
    save_dir = tmp_path / "run"
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
        "DDP",
        "--save_dir",
        str(save_dir),
        "--train_batch_size",
        "2",
        "--total_num_steps",
        "1000000",
        "--n_train",
        "8",
        "--save_interval",
        "1000000",
        "--log_interval",
        "1000",
    ]
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        lock = save_dir / "run.lock"
        deadline = time.time() + 300
        while not (lock.exists() and lock.read_text().startswith("pid ")) and time.time() < deadline:
            assert launcher.poll() is None, "the run ended before it took its lock"
            time.sleep(0.5)
        holder = int(lock.read_text().split()[1])
        workers = [int(p) for p in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()]
        assert holder in workers and len(workers) == 2
        with pytest.raises(RunLocked, match=rf"pid {holder} on "):
            RunLock(save_dir).__enter__()
        os.kill(launcher.pid, signal.SIGKILL)  # only the launcher
        launcher.wait()
        deadline = time.time() + 60
        while any(_alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.5)
        assert not any(_alive(p) for p in workers), "workers outlived their launcher"
        while time.time() < deadline:  # a zombie's other threads may still be exiting, holding its files
            try:
                with RunLock(save_dir):  # released by the kernel once its holder is gone
                    break
            except RunLocked:
                time.sleep(0.5)
        else:
            pytest.fail("the lock outlived its holder")
    finally:  # whatever failed above, leave nothing running
        for pid in [launcher.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        launcher.wait()
