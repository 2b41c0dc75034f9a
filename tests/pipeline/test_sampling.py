"""Sampling runs (sfm/pipeline/sampling.py, sample_store.py, sample_inputs.py) and their entry
sfm/tasks/gen.py: tiny untrained diffusion model, small random OC20-like inputs."""

import importlib.util
import os
import subprocess
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from sfm.data import Dictionary, LmdbDataset, write_lmdb
from sfm.eval.gen_metrics import group_samples
from sfm.models import build_model
from sfm.pipeline.checkpoint import save_consolidated
from sfm.pipeline.sample_inputs import composition_numbers, parse_compositions
from sfm.pipeline.sample_store import done_keys, sample_key
from sfm.pipeline.sampling import GenConfig, plan_batches, run_sampling, sample_indices
from sfm.tasks import gen, gen_table

ROOT = Path(__file__).resolve().parents[2]
NUM_INPUTS = 5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """``(checkpoint, inputs LMDB)``: a tiny diffusion model (prior fitted) and 5 structures of 8-12 atoms."""
    spec = importlib.util.spec_from_file_location("tests_root_conftest", ROOT / "tests" / "conftest.py")
    shared = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shared)
    oc20_like = shared.oc20_like  # the shared random OC20-like entry

    out = tmp_path_factory.mktemp("sampling")
    items = [oc20_like(i, natoms=8 + i) for i in range(NUM_INPUTS)]
    for i, d in enumerate(items):
        d.tags[:2] = 2  # every input has atoms to generate in inpaint
        d.sid = 100 + i
    torch.manual_seed(0)
    model = build_model("tiny", head="diffusion")
    model.fit_normalizer(items)
    model.lattice_process.std.mul_(0.1)  # a narrow prior: the untrained network's csp lattices stay usable cells
    save_consolidated(
        out / "model.pt",
        state_dict=model.state_dict(),
        build_kwargs=model.build_kwargs,
        meta={"task": "diffusion", "dictionary": Dictionary.load().tokens},
    )
    write_lmdb(out / "data.lmdb", items)
    return out / "model.pt", out / "data.lmdb"


def config(world, save_dir, **kw):
    ckpt, data = world
    base = dict(
        save_dir=str(save_dir),
        checkpoint=str(ckpt),
        data_path=str(data),
        mode="inpaint",
        sampler="ode",
        steps=2,
        num_samples=2,
        batch_size=3,
        seed=0,
        progress=False,
    )
    base.update(kw)
    return GenConfig(**base)


def sampled(cfg):
    run_sampling(cfg)
    return by_key(cfg.save_dir)


def by_key(save_dir):
    samples = LmdbDataset(Path(save_dir) / "samples")
    out = {}
    for i in range(len(samples)):
        d = samples[i]
        assert sample_key(d) not in out, f"duplicate sample {sample_key(d)}"
        out[sample_key(d)] = d
    return out


def read_xyz(save_dir):
    return [a for path in sorted((Path(save_dir) / "samples").glob("*.extxyz")) for a in ase.io.read(path, ":")]


def test_plan_is_sample_major_batches():
    assert plan_batches(3, 2, 4) == [[(0, 0), (1, 0), (2, 0), (0, 1)], [(1, 1), (2, 1)]]


@pytest.mark.parametrize("mode", ["inpaint", "lattice_given", "csp"])
def test_outputs_readable_given_parts_held(world, tmp_path, mode):
    cfg = config(world, tmp_path / mode, mode=mode)
    stats = run_sampling(cfg)
    assert stats["samples_written_this_run"] == 2 * NUM_INPUTS and stats["network_calls_per_sample"] == 3
    samples, inputs = by_key(cfg.save_dir), LmdbDataset(world[1])
    assert set(samples) == {(100 + i, s) for i in range(NUM_INPUTS) for s in range(2)}
    xyz = read_xyz(cfg.save_dir)
    assert len(xyz) == len(samples)
    for atoms in xyz:
        d = samples[(int(atoms.info["sid"]), int(atoms.info["sample_idx"]))]
        assert (
            np.allclose(atoms.positions, d.pos.numpy(), atol=1e-5) and (atoms.numbers == d.atomic_numbers.numpy()).all()
        )
        assert np.allclose(atoms.cell[:], d.cell[0].numpy(), atol=1e-5) and atoms.pbc.all()
    for (sid, s), d in samples.items():
        ref = inputs[sid - 100]
        assert (
            d.cell.shape == (1, 3, 3) and d.natoms == ref.natoms and torch.equal(d.atomic_numbers, ref.atomic_numbers)
        )
        assert torch.equal(d.tags, ref.tags) and d.mode == mode and d.sampler == "ode" and d.steps == 2 and d.nfe == 3
        frac = torch.linalg.solve(d.cell[0].double().T, d.pos.double().T).T
        assert frac.min() > -1e-5 and frac.max() < 1 + 1e-5
        if mode != "csp":
            assert torch.equal(d.cell, ref.cell)  # given lattice, bit for bit
        given = (ref.tags != 2) if mode == "inpaint" else torch.zeros(int(d.natoms), dtype=torch.bool)
        assert torch.equal(d.generated, ~given)
        assert torch.equal(d.pos[given], ref.pos[given])  # given atoms, bit for bit
        assert not torch.allclose(d.pos[~given], ref.pos[~given], atol=1e-3)


def test_crash_keeps_committed_resume_completes_identically(world, tmp_path):
    whole = config(world, tmp_path / "whole")
    run_sampling(whole)
    crashed = config(world, tmp_path / "crashed", fail_after_batches=2)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_sampling(crashed)
    kept = by_key(crashed.save_dir)
    assert len(kept) == 2 * crashed.batch_size and len(read_xyz(crashed.save_dir)) == len(kept)
    stats = run_sampling(config(world, tmp_path / "crashed"))  # the same command again: resumes
    assert stats["samples_written_this_run"] == 2 * NUM_INPUTS - len(kept)
    assert run_sampling(config(world, tmp_path / "crashed"))["samples_written_this_run"] == 0
    resumed, reference = by_key(crashed.save_dir), by_key(whole.save_dir)
    assert set(resumed) == set(reference) and len(read_xyz(crashed.save_dir)) == len(reference)
    for key, d in reference.items():  # independent of where the first run stopped
        assert torch.equal(resumed[key].pos, d.pos), key
    # more samples per input later: the first ones are kept, the new ones added
    more = run_sampling(config(world, tmp_path / "crashed", num_samples=3))
    assert more["samples_written_this_run"] == NUM_INPUTS and len(done_keys(crashed.save_dir)) == 3 * NUM_INPUTS


def test_extxyz_is_rebuilt_from_the_lmdb_on_resume(world, tmp_path):
    cfg = config(world, tmp_path / "run", num_samples=1)
    run_sampling(cfg)
    xyz = Path(cfg.save_dir) / "samples" / "rank_00000.extxyz"
    xyz.write_text(xyz.read_text()[:-200])  # a frame cut short, as a crash mid-write leaves it
    run_sampling(cfg)
    assert len(ase.io.read(xyz, ":")) == NUM_INPUTS


def test_seed_determines_samples(world, tmp_path):
    a = sampled(config(world, tmp_path / "a", num_samples=1))
    b = sampled(config(world, tmp_path / "b", num_samples=1))
    c = sampled(config(world, tmp_path / "c", num_samples=1, seed=1))
    assert all(torch.equal(a[k].pos, b[k].pos) for k in a)
    assert not any(torch.equal(a[k].pos, c[k].pos) for k in a)


def test_refine_from_the_input_stays_near_it(world, tmp_path):
    inputs = LmdbDataset(world[1])
    for (sid, _), d in sampled(config(world, tmp_path / "refine", t_start=0.05, num_samples=1)).items():
        ref = inputs[sid - 100]
        moved = (d.pos - ref.pos).norm(dim=-1)
        assert d.t_start == 0.05 and moved[ref.tags != 2].max() == 0 and 0 < moved.max() < 0.3


def test_denoising_away_from_the_trained_placement_time_warns(world, tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("tiny", head="diffusion", placement_prob=0.5, placement_t=0.4)
    model.fit_normalizer(list(LmdbDataset(world[1])))
    ckpt = tmp_path / "placed.pt"
    save_consolidated(
        ckpt,
        state_dict=model.state_dict(),
        build_kwargs=model.build_kwargs,
        meta={"task": "diffusion", "dictionary": Dictionary.load().tokens},
    )
    for t_start, warned in ((0.3, True), (0.4, False)):
        run_sampling(
            config(
                world,
                tmp_path / f"t{t_start}",
                checkpoint=str(ckpt),
                t_start=t_start,
                renoise=False,
                num_samples=1,
                max_inputs=2,
            )
        )
        err = capsys.readouterr().err
        assert ("trained to denoise placements at t = 0.4" in err) == warned, err


def test_baselines_need_no_model(world, tmp_path):
    _, data = world
    inputs = LmdbDataset(data)
    initial = config(world, tmp_path / "initial", checkpoint=None, sampler="baseline_initial")
    assert run_sampling(initial)["network_calls_per_sample"] == 0
    for (sid, _), d in by_key(initial.save_dir).items():
        assert torch.equal(d.pos, inputs[sid - 100].pos) and torch.equal(d.cell, inputs[sid - 100].cell)
    rand = config(world, tmp_path / "random", checkpoint=None, sampler="baseline_random")
    run_sampling(rand)
    for (sid, _), d in by_key(rand.save_dir).items():
        ref = inputs[sid - 100]
        assert torch.equal(d.pos[ref.tags != 2], ref.pos[ref.tags != 2]) and torch.equal(d.cell, ref.cell)
    csp = config(
        world, tmp_path / "csp", checkpoint=None, sampler="baseline_random", mode="csp", lattice_data=str(data)
    )
    run_sampling(csp)
    cells = {tuple(inputs[i].cell.flatten().tolist()) for i in range(NUM_INPUTS)}
    assert all(tuple(d.cell.flatten().tolist()) in cells for d in by_key(csp.save_dir).values())
    with pytest.raises(ValueError, match="needs a checkpoint"):
        run_sampling(config(world, tmp_path / "x", checkpoint=None, sampler="baseline_random", mode="csp"))


def test_inputs_sharing_a_sid_number_their_samples_in_input_order(world, tmp_path):
    """Several placements of one system (a dense split's) as inputs: sample_idx continues per
    sid in input order, so the samples stay distinct, resume and group in that order."""
    _, data = world
    inputs = [d for d in LmdbDataset(data)]
    for d in inputs[:3]:
        d.sid = 7  # three placements of system 7, two systems of their own
    write_lmdb(tmp_path / "shared.lmdb", inputs)
    assert sample_indices([7, 7, 103, 7, 104], 2) == [0, 2, 0, 4, 0]
    cfg = config(
        world, tmp_path / "run", checkpoint=None, sampler="baseline_initial", data_path=str(tmp_path / "shared.lmdb")
    )
    got = sampled(cfg)  # by_key: no two samples share (sid, sample_idx)
    assert sorted(got) == [(7, 0), (7, 1), (7, 2), (7, 3), (7, 4), (7, 5), (103, 0), (103, 1), (104, 0), (104, 1)]
    for (sid, idx), d in got.items():
        assert int(d.input_index) == (idx // 2 if sid == 7 else sid - 100)
        assert torch.equal(d.pos, inputs[int(d.input_index)].pos)
    assert [int(d.input_index) for d in group_samples(LmdbDataset(Path(cfg.save_dir) / "samples"))[7]] == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]
    assert run_sampling(cfg)["samples_written_this_run"] == 0  # all found on resume


def test_compositions():
    assert composition_numbers("Cu3Au") == [29, 29, 29, 79]
    assert composition_numbers("Cu3Au", formula_units=2) == [29] * 6 + [79] * 2
    assert composition_numbers("Cu2Au2", num_atoms=6) == [29] * 3 + [79] * 3
    with pytest.raises(ValueError, match="not a whole number"):
        composition_numbers("Cu3Au", num_atoms=6)
    with pytest.raises(ValueError, match="cannot read composition"):
        composition_numbers("Qq2")
    assert parse_compositions("Cu3Au, NaCl\tPt") == ["Cu3Au", "NaCl", "Pt"]


def test_cli_compositions_and_metrics(world, tmp_path):
    ckpt, data = world
    common = ["--checkpoint", str(ckpt), "--sampler", "ode", "--steps", "2", "--no_progress"]
    out = gen.main([*common, "--compositions", "Cu3Au,NaCl", "--formula_units", "2", "--save_dir", str(tmp_path / "c")])
    samples = by_key(tmp_path / "c")
    assert [int(samples[(i, 0)].natoms) for i in range(2)] == [8, 4] and samples[(1, 0)].formula == "NaCl"
    assert out["metrics"]["samples"] == 2 and (tmp_path / "c" / "metrics.txt").exists()
    out = gen.main(
        [
            *common,
            "--data_path",
            str(data),
            "--mode",
            "inpaint",
            "--num_samples",
            "2",
            "--save_dir",
            str(tmp_path / "i"),
        ]
    )
    m = out["metrics"]
    assert m["systems"] == NUM_INPUTS and m["k"] == 2 and m["adwt_atoms"] == "adsorbate" and m["validity"] >= 0
    assert out["run"]["network_calls_per_sample"] == 3 and out["run"]["samples_per_s"] > 0
    assert (tmp_path / "i" / "metrics.json").exists() and "network calls per sample" in (
        tmp_path / "i" / "metrics.txt"
    ).read_text()
    lines = gen_table.main([str(tmp_path / name / "metrics.json") for name in ("c", "i")]).splitlines()
    assert len(lines) == 4 and lines[3].startswith("| i | inpaint | ode | 2 | 3 | 5 x 2 |")
    again = gen.main(
        [
            *common,
            "--data_path",
            str(data),
            "--mode",
            "inpaint",
            "--num_samples",
            "2",
            "--save_dir",
            str(tmp_path / "i"),
        ]
    )  # a resume with nothing left to make
    assert again["run"]["samples_written_this_run"] == 0 and again["run"]["network_calls_per_sample"] == 3
    assert all(again["metrics"][key] == m[key] for key in ("validity", "adwt@1", "adwt@2", "distance@2"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--checkpoint", "missing.pt", "--data_path", "{data}"], "checkpoint missing.pt: no such file"),
        (["--checkpoint", "{ckpt}", "--data_path", "nowhere.lmdb"], "data_path nowhere.lmdb: no such file"),
        (["--checkpoint", "{ckpt}"], "give exactly one input"),
        (["--checkpoint", "{ckpt}", "--compositions", "NaCl", "--mode", "inpaint"], "compositions carry no cell"),
        (["--checkpoint", "{ckpt}", "--data_path", "{data}", "--num_atoms", "4"], "compositions only"),
        (["--checkpoint", "{ckpt}", "--data_path", "{data}", "--steps", "0"], "steps must be >= 1"),
        (["--checkpoint", "{ckpt}", "--data_path", "{data}", "--given_tags", "a"], "comma-separated integers"),
        (["--data_path", "{data}", "--sampler", "pc"], "needs a checkpoint"),
        (["--data_path", "{data}", "--mode", "fold"], "invalid choice: 'fold'"),
        (
            ["--data_path", "{data}", "--sampler", "baseline_initial", "--t_start", "0.5"],
            "needs data_path and sampler pc or ode",
        ),
        (["--checkpoint", "{ckpt}", "--data_path", "{data}", "--t_start", "0"], "t_start must be in (0, 1]"),
        (["--checkpoint", "{ckpt}", "--data_path", "{data}", "--no_renoise"], "it needs t_start < 1"),
        (
            ["--checkpoint", "{ckpt}", "--data_path", "{data}", "--sampler", "pc", "--churn", "1"],
            "setting of the ode sampler",
        ),
    ],
)
def test_cli_rejects_bad_input(world, tmp_path, capsys, flags, message):
    ckpt, data = world
    argv = [f.format(ckpt=ckpt, data=data) for f in flags] + ["--save_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        gen.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_other_settings_in_the_same_save_dir_are_refused(world, tmp_path):
    run_sampling(config(world, tmp_path / "run", num_samples=1))
    with pytest.raises(ValueError, match=r"other settings \(seed: 0 before, 1 now\)"):
        run_sampling(config(world, tmp_path / "run", num_samples=1, seed=1))


def test_s2ef_checkpoint_is_refused(world, tmp_path):
    model = build_model("tiny", head="s2ef")
    save_consolidated(
        tmp_path / "s2ef.pt", state_dict=model.state_dict(), build_kwargs=model.build_kwargs, meta={"task": "s2ef"}
    )
    with pytest.raises(ValueError, match="not a diffusion model"):
        run_sampling(config(world, tmp_path / "out", checkpoint=str(tmp_path / "s2ef.pt")))
    assert run_sampling(config(world, tmp_path / "out", num_samples=1))["samples_written_this_run"] == NUM_INPUTS


def test_torchrun_two_processes_shard_without_overlap(world, tmp_path):
    ckpt, data = world
    single = config(world, tmp_path / "single")
    run_sampling(single)
    env = dict(os.environ, NPROC="2", OMP_NUM_THREADS="1")
    cmd = [
        "bash",
        str(ROOT / "scripts" / "gen_oc20.sh"),
        "--checkpoint",
        str(ckpt),
        "--data_path",
        str(data),
        "--mode",
        "inpaint",
        "--sampler",
        "ode",
        "--steps",
        "2",
        "--num_samples",
        "2",
        "--batch_size",
        "3",
        "--save_dir",
        str(tmp_path / "two"),
        "--no_progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_rank = [{sample_key(d) for d in LmdbDataset(p)} for p in sorted((tmp_path / "two" / "samples").glob("*.lmdb"))]
    assert len(per_rank) == 2 and all(per_rank) and not per_rank[0] & per_rank[1]
    two, one = by_key(tmp_path / "two"), by_key(single.save_dir)
    assert set(two) == set(one)
    for key, d in one.items():  # the same samples whatever the number of processes
        assert torch.allclose(two[key].pos, d.pos, atol=1e-4), key
    assert "validity" in proc.stdout and (tmp_path / "two" / "metrics.json").exists()


def test_test_split_scores_no_relaxed_metrics(world, tmp_path, capsys):
    """baseline_initial on a test split (no pos_relaxed): ADwT and match would compare `pos` with
    itself (1.000); they are skipped with the reason instead."""
    _, data = world
    entries = list(LmdbDataset(data))
    for d in entries:
        del d.pos_relaxed, d.y_relaxed
    write_lmdb(tmp_path / "test.lmdb", entries)
    out = gen.main(
        [
            "--data_path",
            str(tmp_path / "test.lmdb"),
            "--sampler",
            "baseline_initial",
            "--mode",
            "inpaint",
            "--save_dir",
            str(tmp_path / "out"),
            "--no_progress",
        ]
    )
    m = out["metrics"]
    assert "adwt@1" not in m and "match@1" not in m and "no pos_relaxed" in m["skipped"]["match, ADwT, distance"]
    assert "skipped: match, ADwT, distance" in capsys.readouterr().out


def test_non_finite_model_output_stops_sampling_naming_the_structures(world, tmp_path):
    ckpt, _ = world
    saved = torch.load(ckpt, weights_only=True)
    name = next(k for k, v in saved["state_dict"].items() if v.is_floating_point() and "coord" in k)
    saved["state_dict"][name] = torch.full_like(saved["state_dict"][name], float("nan"))
    torch.save(saved, tmp_path / "nan.pt")
    with pytest.raises(
        FloatingPointError,
        match=r"diffusion model's output is not finite at t = 1 for 3 structure\(s\) "
        r"\(sid 100, sid 101, sid 102\)",
    ):
        run_sampling(config(world, tmp_path / "out", checkpoint=str(tmp_path / "nan.pt")))


def test_a_second_sampling_run_on_the_same_save_dir_is_refused(world, tmp_path):
    from sfm.pipeline.run_lock import RunLock, RunLocked

    with RunLock(tmp_path / "out"), pytest.raises(RunLocked, match=rf"in use by another run \(pid {os.getpid()} on "):
        run_sampling(config(world, tmp_path / "out", num_samples=1))
    assert not (tmp_path / "out" / "samples").exists()
