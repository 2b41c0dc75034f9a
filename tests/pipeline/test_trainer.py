"""The training loop under the Single strategy, in-process, with the toy model of trainer_toy.py."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from trainer_toy import ToyEnergy, build_toy, toy_structures

from sfm.data import collate
from sfm.pipeline.checkpoint import load_checkpoint, read_consolidated
from sfm.pipeline.trainer import NonFiniteTraining, TrainConfig, seed_everything, train


def records(save_dir, split="train"):
    lines = (json.loads(line) for line in open(save_dir / "metrics.jsonl"))
    return [r for r in lines if r["split"] == split]


def fresh_model(noise=0.0, seed=0):
    seed_everything(seed)
    return ToyEnergy(noise=noise)


def config(tmp_path, name="run", **kw):
    base = dict(
        save_dir=str(tmp_path / name),
        total_num_steps=6,
        warmup_num_steps=2,
        max_lr=3e-3,
        train_batch_size=4,
        val_batch_size=4,
        log_interval=1,
        save_interval=100,
    )
    return TrainConfig(**{**base, **kw})


def test_overfits_a_handful_of_structures(tmp_path):
    data = toy_structures(6)
    cfg = config(tmp_path, total_num_steps=80, warmup_num_steps=5, max_lr=1e-2, train_batch_size=6, ema_decay=0.9)
    out = train(fresh_model(), data, None, cfg, meta={"task": "toy"})
    losses = [r["loss"] for r in records(tmp_path / "run")]
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])
    assert out["step"] == 80 and out["nonfinite_steps"] == 0


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    """Kill after the step-3 checkpoint (mid-epoch, inside an accumulation cycle's epoch), resume, compare."""
    data, valid = toy_structures(10), toy_structures(3, seed=1)
    cfg = config(
        tmp_path,
        "a",
        total_num_steps=8,
        save_interval=3,
        keep_checkpoints=0,
        train_batch_size=3,
        gradient_accumulation_steps=2,
    )
    train(fresh_model(noise=0.05), data, valid, cfg)
    a = tmp_path / "a"
    # The run as it stood when killed right after writing step 3: later checkpoints and records gone.
    b = tmp_path / "b"
    shutil.copytree(a, b)
    for late in ("step_0000006", "step_0000008"):
        shutil.rmtree(b / "checkpoints" / late)
    (b / "checkpoints" / "latest").write_text("step_0000003\n")
    (b / "model.pt").unlink()
    (b / "metrics.jsonl").write_text(
        "".join(line for line in open(a / "metrics.jsonl") if json.loads(line)["step"] <= 3)
    )

    with pytest.raises(FileExistsError, match="--resume"):
        train(fresh_model(noise=0.05, seed=7), data, valid, replace(cfg, save_dir=str(b)))
    train(fresh_model(noise=0.05, seed=7), data, valid, replace(cfg, save_dir=str(b), resume="auto"))
    for split in ("train", "valid"):
        ra = [(r["step"], r["loss"]) for r in records(a, split) if r["step"] > 3]
        rb = [(r["step"], r["loss"]) for r in records(b, split) if r["step"] > 3]
        assert ra == rb and len(ra) >= 2, split
    sa, sb = read_consolidated(a / "model.pt")["state_dict"], read_consolidated(b / "model.pt")["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_consolidated_checkpoint_reloads_to_identical_outputs(tmp_path):
    data = toy_structures(8)
    model = fresh_model()
    cfg = config(tmp_path, total_num_steps=4, ema_decay=0.0)  # EMA == live weights: compare with the trained model
    out = train(model, data, None, cfg, meta={"task": "toy", "dictionary": ["H", "O", "Cu", "Pt"], "args": {"x": 1}})
    loaded = load_checkpoint(out["checkpoint"], build_fn=build_toy)
    assert not loaded.training
    batch = collate(data)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.normalised_energy(batch), model.normalised_energy(batch))
    meta = loaded.checkpoint
    assert meta["format"] == "sfm" and meta["build_kwargs"] == model.build_kwargs and meta["step"] == 4
    assert meta["dictionary"] == ["H", "O", "Cu", "Pt"] and meta["args"] == {"x": 1} and meta["task"] == "toy"
    assert meta["config"]["total_steps"] == 4 and "version" in meta and "state_dict" not in meta
    assert "energy_mean" in read_consolidated(out["checkpoint"])["state_dict"]  # normaliser travels in buffers


def test_checkpoint_holds_ema_not_live_weights(tmp_path):
    data = toy_structures(8)
    model = fresh_model()
    out = train(model, data, None, config(tmp_path, total_num_steps=4, ema_decay=0.99))
    saved = read_consolidated(out["checkpoint"])["state_dict"]
    assert not torch.equal(saved["mlp.0.weight"], model.state_dict()["mlp.0.weight"])


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    data = toy_structures(8)
    one = train(
        fresh_model(), data, None, config(tmp_path, "big", total_num_steps=1, train_batch_size=4, ema_decay=0.0)
    )
    two = train(
        fresh_model(),
        data,
        None,
        config(tmp_path, "acc", total_num_steps=1, train_batch_size=2, gradient_accumulation_steps=2, ema_decay=0.0),
    )
    a, b = read_consolidated(one["checkpoint"])["state_dict"], read_consolidated(two["checkpoint"])["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_validation_logs_each_component_each_epoch(tmp_path):
    data, valid = toy_structures(8), toy_structures(4, seed=1)
    train(fresh_model(), data, valid, config(tmp_path, total_num_steps=5))  # 2 steps per epoch
    rows = records(tmp_path / "run", "valid")
    assert [r["step"] for r in rows] == [2, 4, 5]
    assert all({"loss", "energy_mse", "energy_mae", "structures"} <= set(r) and r["structures"] == 4 for r in rows)
    assert (tmp_path / "run" / "tb").is_dir() and json.loads((tmp_path / "run" / "config.json").read_text())[
        "total_steps"
    ] == 5


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    data = toy_structures(8, nan_at={3})
    out = train(fresh_model(), data, None, config(tmp_path, total_num_steps=8, train_batch_size=1, save_interval=4))
    assert out["nonfinite_steps"] == 1 and out["step"] == 8
    state = read_consolidated(out["checkpoint"])["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())


class GoesBad(torch.utils.data.Dataset):
    """Labels turn NaN after `good` reads (a run that diverges, deterministically)."""

    def __init__(self, data, good):
        self.data, self.good, self.reads = data, good, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.reads += 1
        d = self.data[i].clone()
        if self.reads > self.good:
            d.y = float("nan")
        return d


def test_repeated_nonfinite_stops_with_a_clear_message(tmp_path):
    cfg = config(
        tmp_path, total_num_steps=20, train_batch_size=4, save_interval=1, max_nonfinite_steps=3, keep_checkpoints=0
    )
    with pytest.raises(NonFiniteTraining, match=r"3 consecutive steps .*the last good checkpoint is \S*step_0000002"):
        train(fresh_model(), GoesBad(toy_structures(8), good=8), None, cfg)
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_0000002"


def test_max_sites_skips_empty_batches_and_counts_what_it_dropped(tmp_path, capsys):
    data = toy_structures(8, natoms=(3, 8))
    too_big = sum(d.num_nodes > 5 for d in data)
    out = train(fresh_model(), data, data, config(tmp_path, total_num_steps=6, train_batch_size=1, max_sites=5))
    assert out["step"] == 6 and out["empty_batches"] > 0
    assert out["dropped_structures"] == out["empty_batches"]  # one structure per batch
    assert out["valid"]["dropped_structures"] == too_big > 0
    assert (
        f"--max_sites 5: {out['dropped_structures']} training structures were not trained on "
        f"({out['empty_batches']} micro-batches empty); validation dropped {too_big}"
    ) in capsys.readouterr().out


def test_max_sites_below_every_structure_stops_with_a_clear_message(tmp_path):
    data = toy_structures(6, natoms=(6, 8))
    with pytest.raises(ValueError, match=r"--max_sites 5 drops every training structure \(3 batches in a row"):
        train(fresh_model(), data, None, config(tmp_path, total_num_steps=4, train_batch_size=2, max_sites=5))


def test_bf16_autocast_step(tmp_path):
    out = train(fresh_model(), toy_structures(4), None, config(tmp_path, total_num_steps=2, bf16=True))
    assert out["step"] == 2 and out["nonfinite_steps"] == 0


def test_rejects_a_model_without_the_contract(tmp_path):
    with pytest.raises(TypeError, match="loss"):
        train(torch.nn.Linear(2, 2), toy_structures(2), None, config(tmp_path))


def test_ddp_one_process_matches_single(tmp_path):
    """DDP through a one-process group on localhost (plain python: no torchrun needed)."""
    data = toy_structures(8)
    ref = train(fresh_model(), data, None, config(tmp_path, "single", total_num_steps=2))
    ddp = train(fresh_model(), data, None, config(tmp_path, "ddp", total_num_steps=2, strategy="DDP"))
    a, b = read_consolidated(ref["checkpoint"])["state_dict"], read_consolidated(ddp["checkpoint"])["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert not torch.distributed.is_initialized()


def test_single_refuses_several_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="use --strategy DDP or Zero"):
        train(fresh_model(), toy_structures(2), None, config(tmp_path))


def test_resume_accepts_run_checkpoint_dirs_and_files(tmp_path):
    from sfm.pipeline.trainer import resolve_resume

    run = tmp_path / "run"
    train(
        fresh_model(), toy_structures(4), None, config(tmp_path, total_num_steps=2, save_interval=1, keep_checkpoints=0)
    )
    step1, step2 = run / "checkpoints" / "step_0000001", run / "checkpoints" / "step_0000002"
    other = TrainConfig(save_dir=str(tmp_path / "elsewhere"))
    for given, want in [(run, step2), (run / "checkpoints", step2), (step1, step1), (step1 / "model.pt", step1)]:
        assert resolve_resume(replace(other, resume=str(given))) == want
    assert resolve_resume(replace(config(tmp_path), resume="auto")) == step2
    assert resolve_resume(replace(other, resume="auto")) is None  # nothing there yet: a fresh start
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        resolve_resume(replace(other, resume=str(tmp_path)))


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL at whatever point the run has reached after its first checkpoint; --resume finishes it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import trainer_toy

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    args = [
        "--total_num_steps",
        "12",
        "--save_interval",
        "3",
        "--log_interval",
        "1",
        "--noise",
        "0.05",
        "--n_train",
        "12",
        "--train_batch_size",
        "3",
        "--warmup_num_steps",
        "2",
        "--max_lr",
        "3e-3",
    ]
    trainer_toy.main(["--save_dir", str(tmp_path / "full"), *args])
    cmd = [sys.executable, trainer_toy.__file__, "--save_dir", str(tmp_path / "killed"), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run(cmd + ["--resume", "auto"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    full, resumed = records(tmp_path / "full"), records(tmp_path / "killed")
    assert [(x["step"], x["loss"]) for x in resumed] == [(x["step"], x["loss"]) for x in full]
    a, b = read_consolidated(tmp_path / "full" / "model.pt"), read_consolidated(tmp_path / "killed" / "model.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_an_old_checkpoint_that_cannot_be_deleted_is_reported(tmp_path, monkeypatch, capsys):
    import shutil as shutil_module

    from sfm.pipeline.checkpoint import mark_latest

    for tag in ("step_0000001", "step_0000002"):
        (tmp_path / tag).mkdir()

    def refuse(path, *args, **kwargs):
        raise PermissionError(f"cannot remove {path}")

    monkeypatch.setattr(shutil_module, "rmtree", refuse)
    mark_latest(tmp_path, "step_0000002", keep=1)
    assert (tmp_path / "latest").read_text().strip() == "step_0000002"
    assert "could not delete the old checkpoint" in capsys.readouterr().err and (tmp_path / "step_0000001").is_dir()
