"""The demo pipelines' stage graphs (quickstart, recipe_diff, recipe_s2ef) and their thin shell scripts.

Commands are recorded, not run (``subprocess.run`` of the stage runner is replaced): these tests
check which entry points each stage launches, with which flags, into which RunLayout paths; the
entry points themselves are tested on their own (and the report on a real tiny run in test_report)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sfm.pipeline import stages
from sfm.pipeline.layout import RunLayout
from sfm.tasks import quickstart, recipe_diff, recipe_s2ef
from tests.tasks.test_api_example import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def launched(monkeypatch):
    """The commands the stages launch, in order; each "succeeds", writes the file after its --json and
    prints "fake output"."""
    calls = []

    def run(cmd, stdout=None, text=None):
        calls.append(cmd)
        if "--json" in cmd:
            out = Path(cmd[cmd.index("--json") + 1])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("{}")
        return subprocess.CompletedProcess(cmd, 0, stdout="fake output\n" if stdout else None)

    monkeypatch.setattr(stages, "subprocess", SimpleNamespace(run=run, PIPE=subprocess.PIPE))
    return calls


@pytest.fixture
def demo(tmp_path):
    """A demo folder that counts as built (summary.json); the pipelines only pass its paths on."""
    path = tmp_path / "demo"
    path.mkdir()
    (path / "summary.json").write_text("{}")
    return path


def entry(cmd) -> str:
    """The entry point a command runs: the module of ``python -m``, the script of torchrun."""
    if "torch.distributed.run" in cmd:
        return Path(next(c for c in cmd if c.endswith(".py"))).stem
    return cmd[cmd.index("-m") + 1]


def flag(cmd, name):
    return cmd[len(cmd) - 1 - cmd[::-1].index(name) + 1]  # the last occurrence wins, as in argparse


def test_recipe_s2ef_script_translates_its_environment(tmp_path, demo, launched):
    fake_venv = tmp_path / "venv"
    (fake_venv / "bin").mkdir(parents=True)
    (fake_venv / "bin" / "python").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    (fake_venv / "bin" / "python").chmod(0o755)
    env = {
        **os.environ,
        "SFM_VENV": str(fake_venv),
        "ARGS_OUT": str(tmp_path / "args"),
        "STAGES": "train eval",
        "RUN_DIR": str(tmp_path / "run"),
        "DEMO_DIR": str(demo),
        "TRAIN_STEPS": "7",
        "ENERGY_COEF": "2",
        "RESTART_STEPS": "4",
        "RESTART_LR": "3e-4",
        "ENERGY_FT_STEPS": "3",
        "ENERGY_FT_COEF": "9",
        "ENERGY_FT_BRANCH": "1",
        "ENERGY_FT_LOSS": "mae",
        "TRAIN_FLAGS": "--avg_num_atoms 1",
        "BACKBONE": "grid_resolution=12 num_layers=1",
    }
    subprocess.run(["bash", str(ROOT / "scripts" / "recipe_s2ef_demo.sh")], env=env, check=True, timeout=60)
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:2] == ["-m", "sfm.tasks.recipe_s2ef"] and "--train_flags=--avg_num_atoms 1" in args

    assert recipe_s2ef.main(args[2:]) == 0
    assert [entry(c) for c in launched] == ["train_s2ef"] * 3 + ["sfm.tasks.eval_s2ef"] * 2
    train, restart, energy = launched[:3]  # the training, its warm restart, then the energy's fine-tuning
    assert flag(train, "--total_num_steps") == "7" and flag(train, "--energy_coef") == "2.0"
    assert flag(train, "--save_dir") == str(tmp_path / "run" / "direct") and flag(train, "--strategy") == "DDP"
    assert flag(train, "--train_data_path") == str(demo / "s2ef" / "train") and "--valid_data_path" not in train
    for cmd in (train, restart, energy):
        assert cmd[-5:] == ["--backbone", "grid_resolution=12", "num_layers=1", "--avg_num_atoms", "1"]
        assert "--force_coef" not in cmd  # train_s2ef.py's default
    assert flag(restart, "--total_num_steps") == "4" and flag(restart, "--max_lr") == "0.0003"
    assert flag(restart, "--init_from") == str(tmp_path / "run" / "direct" / "model.pt")
    assert flag(restart, "--save_dir") == str(tmp_path / "run" / "restart") and flag(restart, "--energy_coef") == "2.0"
    assert "--energy_branch" not in restart and flag(restart, "--forces") == "direct"
    assert flag(energy, "--total_num_steps") == "3" and flag(energy, "--energy_coef") == "9.0"
    assert flag(energy, "--init_from") == str(tmp_path / "run" / "restart" / "model.pt")
    assert flag(energy, "--save_dir") == str(tmp_path / "run") and flag(energy, "--max_lr") == "0.001"
    assert flag(energy, "--energy_branch") == "1" and flag(energy, "--energy_loss") == "mae"
    assert (
        flag(energy, "--train_data_path") == flag(train, "--train_data_path") and flag(energy, "--forces") == "direct"
    )
    run = RunLayout(tmp_path / "run", s2ef=".")
    assert flag(launched[3], "--json") == str(run.s2ef_eval("val_id")) and run.is2re_eval.exists()
    timed = [(r["stage"], r.get("step"), r["status"]) for r in map(json.loads, run.timings.open())]
    assert timed == [
        ("data", None, "reused"),
        ("train", "train", "done"),
        ("train", "train_restart", "done"),
        ("train", "train_energy", "done"),
        ("train", None, "done"),
        ("eval", "eval_s2ef", "done"),
        ("eval", "eval_is2re", "done"),
        ("eval", None, "done"),
    ]
    assert json.loads(run.settings.read_text())["settings"]["train_steps"] == 7


def test_recipe_s2ef_rattled_builds_the_frames_once_and_trains_on_them(tmp_path, demo, launched):
    argv = ["--stages", "train eval", "--run_dir", str(tmp_path / "run"), "--demo_dir", str(demo), "--rattled", "3"]
    argv += ["--energy_ft_steps", "0", "--restart_steps", "0"]  # the direct training alone
    assert recipe_s2ef.main(argv) == 0
    rattle, train = launched[0], launched[1]
    out = demo / "s2ef" / "train_rattled3"
    assert entry(rattle) == "sfm.data.rattle" and flag(rattle, "--per_system") == "3"
    assert flag(rattle, "--data") == str(demo / "s2ef" / "train") and flag(rattle, "--out") == str(out)
    assert flag(train, "--train_data_path") == str(out)
    for ev in launched[2:]:  # the baselines are fitted on the world's own frames
        assert flag(ev, "--train_data_path") == str(demo / "s2ef" / "train")
    out.mkdir(parents=True)  # built: reused
    launched.clear()
    assert recipe_s2ef.main([*argv, "--stages", "train"]) == 0
    assert [entry(c) for c in launched] == ["train_s2ef"]
    with pytest.raises(SystemExit):
        recipe_s2ef.main([*argv, "--data_kind", "is2re"])


def test_recipe_s2ef_conservative_fine_tuning_follows_the_direct_training(tmp_path, demo, launched):
    run = tmp_path / "run"
    argv = ["--stages", "train", "--run_dir", str(run), "--demo_dir", str(demo), "--train_steps", "5"]
    argv += ["--energy_ft_steps", "0", "--restart_steps", "0"]  # the conservative fine-tuning last
    assert recipe_s2ef.main([*argv, "--conservative_steps", "3", "--conservative_lr", "1e-4"]) == 0
    direct, fine = launched
    assert flag(direct, "--save_dir") == str(run / "direct") and flag(direct, "--forces") == "direct"
    assert flag(direct, "--total_num_steps") == "5" and flag(direct, "--max_lr") == "0.002"
    assert flag(fine, "--save_dir") == str(run) and flag(fine, "--forces") == "conservative"
    assert flag(fine, "--init_from") == str(run / "direct" / "model.pt")
    assert flag(fine, "--total_num_steps") == "3" and flag(fine, "--max_lr") == "0.0001"
    assert flag(fine, "--train_data_path") == flag(direct, "--train_data_path")
    with pytest.raises(SystemExit):  # fine-tuning a conservative model conservatively: refused
        recipe_s2ef.main([*argv, "--conservative_steps", "3", "--forces", "conservative"])


def test_recipe_s2ef_relabel_fine_tunes_on_the_direct_models_relaxations(tmp_path, demo, launched):
    run = tmp_path / "run"
    argv = ["--stages", "train", "--run_dir", str(run), "--demo_dir", str(demo), "--train_steps", "5"]
    argv += ["--energy_ft_steps", "0", "--restart_steps", "0"]  # the relabelled fine-tuning last
    relabel = ["--relabel_systems", "4", "--relabel_steps", "3", "--relabel_mix", "2", "--relabel_shift", "0.7"]
    assert recipe_s2ef.main([*argv, *relabel]) == 0
    direct, relabel, fine = launched
    assert flag(direct, "--save_dir") == str(run / "direct") and flag(direct, "--total_num_steps") == "5"
    assert entry(relabel) == "sfm.relax.relabel" and flag(relabel, "--checkpoint") == str(run / "direct" / "model.pt")
    assert flag(relabel, "--data") == str(demo / "s2ef" / "train") and flag(relabel, "--out") == str(run / "relabel")
    assert flag(relabel, "--num_systems") == "4" and flag(relabel, "--mix") == "2" and flag(relabel, "--shift") == "0.7"
    assert flag(fine, "--save_dir") == str(run) and flag(fine, "--train_data_path") == str(run / "relabel")
    assert flag(fine, "--init_from") == str(run / "direct" / "model.pt") and flag(fine, "--forces") == "direct"
    assert flag(fine, "--total_num_steps") == "3" and flag(fine, "--max_lr") == "0.0002"
    (run / "relabel").mkdir(parents=True)  # labelled: reused
    launched.clear()
    assert recipe_s2ef.main([*argv, "--relabel_systems", "4"]) == 0
    assert [entry(c) for c in launched] == ["train_s2ef", "train_s2ef"]
    with pytest.raises(SystemExit):
        recipe_s2ef.main([*argv, "--relabel_systems", "4", "--conservative_steps", "3"])


def test_recipe_s2ef_fine_tunings_chain_and_a_trained_model_is_reused(tmp_path, demo, launched, capsys):
    run = tmp_path / "run"
    argv = ["--stages", "train", "--run_dir", str(run), "--demo_dir", str(demo), "--train_steps", "5"]
    argv += ["--energy_ft_branch", "0", "--restart_steps", "0"]  # after conservative forces: the whole model's energy
    assert recipe_s2ef.main([*argv, "--conservative_steps", "3", "--energy_ft_steps", "2"]) == 0
    direct, conservative, energy = launched
    assert flag(conservative, "--save_dir") == str(run / "conservative")
    assert flag(conservative, "--init_from") == str(run / "direct" / "model.pt")
    assert flag(energy, "--save_dir") == str(run) and flag(energy, "--init_from") == str(
        run / "conservative" / "model.pt"
    )
    assert flag(energy, "--forces") == "conservative" and flag(energy, "--energy_coef") == "100.0"
    for done in ("direct", "conservative"):  # trained (a rerun after the last training failed): reused
        (run / done).mkdir(parents=True, exist_ok=True)
        tiny_checkpoint(run / done / "model.pt", "s2ef")
    launched.clear()
    assert recipe_s2ef.main([*argv, "--conservative_steps", "3", "--energy_ft_steps", "2"]) == 0
    assert [flag(c, "--save_dir") for c in launched] == [str(run)]
    shutil.rmtree(run / "conservative")  # a fine-tuning retrained: the model fine-tuned from the old one is refused
    tiny_checkpoint(run / "model.pt", "s2ef")
    launched.clear()
    assert recipe_s2ef.main([*argv, "--conservative_steps", "3", "--energy_ft_steps", "2"]) == 1
    assert [flag(c, "--save_dir") for c in launched] == [str(run / "conservative")]
    assert "was fine-tuned from another model" in capsys.readouterr().err
    (run / "conservative").mkdir()
    (run / "conservative" / "model.pt").write_text("not a checkpoint")  # stale: the stage fails, nothing runs
    launched.clear()
    assert recipe_s2ef.main([*argv, "--conservative_steps", "3", "--energy_ft_steps", "2"]) == 1
    assert launched == [] and "does not load with this version of sfm" in capsys.readouterr().err


def test_recipe_s2ef_energy_branch_fine_tuning(tmp_path, demo, launched):
    run = tmp_path / "run"
    argv = ["--stages", "train", "--run_dir", str(run), "--demo_dir", str(demo), "--train_steps", "5"]
    assert recipe_s2ef.main([*argv, "--energy_ft_steps", "2", "--energy_ft_branch", "1", "--restart_steps", "0"]) == 0
    direct, energy = launched
    assert "--energy_branch" not in direct and flag(energy, "--energy_branch") == "1"
    assert flag(energy, "--init_from") == str(run / "direct" / "model.pt") and flag(energy, "--save_dir") == str(run)
    for bad in (["--energy_ft_branch", "1", "--conservative_steps", "3"], ["--energy_ft_loss", "huber"]):
        with pytest.raises(SystemExit):  # a branch on conservative forces, an unknown loss: refused
            recipe_s2ef.main([*argv, *bad])


def test_recipe_s2ef_mlsp_benchmarks_each_split(tmp_path, demo, launched):
    run = tmp_path / "run"
    argv = ["--stages", "mlsp", "--run_dir", str(run), "--demo_dir", str(demo), "--mlsp_systems", "7"]
    assert recipe_s2ef.main(argv) == 0
    assert [entry(c) for c in launched] == ["sfm.tasks.mlsp_bench"] * 2
    layout = RunLayout(run, s2ef=".")
    for cmd, split in zip(launched, ("val_id", "test_id")):
        assert flag(cmd, "--data") == str(demo / "is2re" / split) and flag(cmd, "--json") == str(layout.mlsp(split))
        assert flag(cmd, "--num_systems") == "7" and flag(cmd, "--checkpoint") == str(layout.model("s2ef"))
    with pytest.raises(SystemExit):  # a split the demo world does not have
        recipe_s2ef.main([*argv, "--mlsp_splits", "val_id test"])


def test_recipe_s2ef_place_scores_each_placement_set(tmp_path, demo_world, launched):
    run = tmp_path / "run"
    gen = tmp_path / "gen_run" / "samples"
    argv = ["--stages", "place", "--run_dir", str(run), "--demo_dir", str(demo_world), "--gen_samples", str(gen)]
    assert recipe_s2ef.main(argv + ["--place_systems", "1"]) == 0
    layout = RunLayout(run, s2ef=".")
    assert layout.place_inputs.exists()  # the first place_systems systems of val_id
    scored = [c for c in launched if entry(c) == "sfm.tasks.score"]
    assert [flag(c, "--out") for c in scored] == [
        str(layout.run("place", n)) for n in ("pos", "random", "generated_gen_run")
    ]
    assert all(flag(c, "--reference") == str(layout.place_inputs) and flag(c, "--judge") == "emt" for c in scored)
    assert flag(scored[2], "--samples") == str(gen) and "--drop_unmatched" in scored[0]


def test_recipe_diff_eval_runs_the_quality_bar(tmp_path, demo, launched):
    run = tmp_path / "run"
    assert recipe_diff.main(["--stages", "eval", "--run_dir", str(run), "--demo_dir", str(demo)]) == 0
    gens = {Path(flag(c, "--save_dir")).name: c for c in launched if entry(c) == "gen"}
    expected = []
    for split in ("val_id", "val_ood_ads", "val_ood_cat"):
        expected += [f"inpaint_{split}_ode25"] + ([f"inpaint_{split}_pc100"] if split == "val_id" else [])
        expected += [f"inpaint_{split}_refine_ode10_t0.5", f"inpaint_{split}_denoise_ode10_t0.55"]
        expected += [f"inpaint_{split}_initial", f"inpaint_{split}_random"]
    assert list(gens) == expected + ["csp_val_id_ode25", "csp_val_id_pc100", "csp_val_id_random"]
    denoise = gens["inpaint_val_id_denoise_ode10_t0.55"]
    assert flag(denoise, "--t_start") == "0.55" and "--no_renoise" in denoise and flag(denoise, "--max_inputs") == "100"
    assert flag(gens["csp_val_id_ode25"], "--steps") == "25" and flag(gens["csp_val_id_pc100"], "--num_samples") == "1"
    assert flag(gens["inpaint_val_id_ode25"], "--checkpoint") == str(run / "train" / "model.pt")
    assert (run / "paired.md").read_text() == "".join(
        f"{s}: fake output\n" for s in ("val_id", "val_ood_ads", "val_ood_cat")
    )


def test_recipe_diff_low_energy_training_and_dense_success(tmp_path, demo, launched):
    run = tmp_path / "run"
    layout = RunLayout(run, diff="train")
    (layout.train_set).mkdir(parents=True)
    (layout.train_set / "data.lmdb").write_text("")  # as the lowenergy stage leaves it
    argv = ["--stages", "lowenergy train dense", "--run_dir", str(run), "--demo_dir", str(demo)]
    assert recipe_diff.main(argv + ["--dense_train_systems", "3"]) == 0
    assert [entry(c) for c in launched] == [
        "sfm.data.demo",
        "sfm.data.dense_targets",
        "train_diff",
        *["sfm.data.dense_targets"] * 2,
        *["gen"] * 3,
        "sfm.eval.success",
    ]
    assert flag(launched[0], "--dense_out") == f"{demo}_dense_train" and flag(launched[0], "--dense_train") == "3"
    assert flag(launched[2], "--train_data_path") == str(layout.train_set)
    gens = [c for c in launched if entry(c) == "gen"]
    assert [Path(flag(c, "--save_dir")).name for c in gens] == ["noise_ode25", "denoise_ode10", "denoise_ode5"]
    assert flag(gens[1], "--data_path") == str(layout.dense_inputs("val_id", "heuristic"))
    assert flag(gens[1], "--max_inputs") == "100000" and "--no_renoise" in gens[1]
    success = launched[-1]
    assert f"--samples=denoise_ode5={layout.samples('dense/val_id', 'denoise_ode5')}" in success
    assert (run / "dense_val_id.md").read_text() == "fake output\n"


def test_recipe_diff_backbone_and_dense_without_noise(tmp_path, demo, launched):
    """BACKBONE reaches train_diff.py's --backbone; DENSE_NOISE_SAMPLES=0 with REFINE_STEPS=5 samples
    only the 5-step denoised sites."""
    run = tmp_path / "run"
    argv = ["--stages", "train dense", "--run_dir", str(run), "--demo_dir", str(demo), "--dense_noise_samples", "0"]
    assert recipe_diff.main(argv + ["--backbone", "grid_resolution=10 lmax=2", "--refine_steps", "5"]) == 0
    train = next(c for c in launched if entry(c) == "train_diff")
    assert train[train.index("--backbone") + 1 :][:2] == ["grid_resolution=10", "lmax=2"]
    gens = [Path(flag(c, "--save_dir")).name for c in launched if entry(c) == "gen"]
    assert gens == ["denoise_ode5"]


def test_recipe_diff_dense_in_an_s2ef_models_order(tmp_path, demo, launched):
    """RANK_CHECKPOINT: the denoised samples and the heuristic sites are ranked by that model (a
    single point each) and scored in its order next to the stored order."""
    run = tmp_path / "run"
    argv = ["--stages", "dense", "--run_dir", str(run), "--demo_dir", str(demo), "--dense_noise_samples", "0"]
    assert recipe_diff.main(argv + ["--refine_steps", "5", "--rank_checkpoint", "s2ef.pt"]) == 0
    layout = RunLayout(run, diff="train")
    scores = [c for c in launched if entry(c) == "sfm.tasks.score"]
    assert [flag(c, "--samples") for c in scores] == [
        str(layout.samples("dense/val_id", "denoise_ode5")),
        str(layout.dense_inputs("val_id", "heuristic")),
    ]
    assert all(flag(c, "--checkpoint") == "s2ef.pt" and flag(c, "--steps") == "0" for c in scores)
    success = launched[-1]
    assert entry(success) == "sfm.eval.success"
    names = [a.split("=")[1] for a in success if a.startswith("--samples=")]
    assert names == ["denoise_ode5", "denoise_ode5_ranked", "heuristic_ranked"]
    assert f"--samples=heuristic_ranked={flag(scores[1], '--ranked')}" in success
    assert "--compare=denoise_ode5_ranked:heuristic_ranked" in success


def test_quickstart_fast_stage_graph(tmp_path, demo, launched):
    run = tmp_path / "run"
    assert quickstart.main(["--fast", "--run_dir", str(run), "--demo_dir", str(demo)]) == 0
    assert [entry(c) for c in launched] == [
        "sfm.data.demo",
        "sfm.data.dense_targets",
        "train_diff",
        *["train_s2ef"] * 3,
        "sfm.tasks.eval_s2ef",
        *["gen"] * 6,
        "sfm.tasks.gen_table",
        *["sfm.tasks.score"] * 5,
        "sfm.tasks.report",
    ]
    layout = RunLayout(run)
    dense, targets, diff, s2ef, restart, energy = launched[:6]  # the recipes' stages with the fast settings
    assert flag(dense, "--dense_train") == "12" and flag(dense, "--dense_out") == f"{demo}_dense_train"
    assert "--small" in dense  # the builder checks the small world it extends
    assert flag(targets, "--out") == str(layout.train_set / "data.lmdb")
    assert flag(diff, "--total_num_steps") == "150" and flag(diff, "--warmup_num_steps") == "15"
    assert flag(diff, "--valid_data_path") == str(demo / "is2re" / "val_id")
    assert flag(s2ef, "--total_num_steps") == "150" and flag(s2ef, "--backbone") == "grid_resolution=10"
    # the fine-tunings in the recipe's proportion
    assert flag(restart, "--total_num_steps") == "21" and flag(energy, "--total_num_steps") == "21"
    assert flag(restart, "--init_from") == str(layout.s2ef_dir / "direct" / "model.pt")
    assert flag(energy, "--init_from") == str(layout.s2ef_dir / "restart" / "model.pt")
    assert layout.s2ef_eval("val_id").exists()  # written under a temporary name, then renamed
    assert flag(launched[-2], "--samples") == str(layout.samples("gen", "csp_ode"))
    assert flag(launched[-1], "--demo_dir") == str(demo)


def test_quickstart_stale_checkpoint_fails_its_stage(tmp_path, demo, launched, capsys):
    run = tmp_path / "run"
    (run / "diff").mkdir(parents=True)
    (run / "diff" / "model.pt").write_text("not a checkpoint")
    argv = ["--stages", "train_diff,gen", "--run_dir", str(run), "--demo_dir", str(demo)]
    assert quickstart.main(argv) == 1
    err = capsys.readouterr().err
    assert "FAILED in stage 'train_diff'" in err and "does not load with this version of sfm" in err
    assert launched == []  # nothing launched, gen never started


def test_unknown_stage_exits_2_before_anything(tmp_path, capsys):
    assert recipe_diff.main(["--stages", "train evall", "--run_dir", str(tmp_path / "run")]) == 2
    assert "unknown stage(s) ['evall']" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_modules_print_help():
    for module in ("quickstart", "recipe_diff", "recipe_s2ef"):
        out = subprocess.run(
            [sys.executable, "-m", f"sfm.tasks.{module}", "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert "--stages" in out and "--nproc" in out
