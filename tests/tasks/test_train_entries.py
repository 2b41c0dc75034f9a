"""train_s2ef / train_diff entry points: tiny model on the demo world, Single strategy, in-process."""

import os
import subprocess
from pathlib import Path

import pytest
import torch

import sfm
from sfm.data import LmdbDataset, collate
from sfm.models import build_model
from sfm.tasks import train_diff, train_s2ef

ROOT = Path(__file__).resolve().parents[2]


def flags(world, save_dir, kind, *extra):
    return [
        "--train_data_path",
        str(world / kind / "train"),
        "--valid_data_path",
        str(world / kind / "val_id"),
        "--save_dir",
        str(save_dir),
        "--model_type",
        "tiny",
        "--train_batch_size",
        "2",
        "--val_batch_size",
        "4",
        "--total_num_steps",
        "2",
        "--warmup_num_steps",
        "1",
        "--max_lr",
        "1e-3",
        "--log_interval",
        "1",
        *extra,
    ]


def live_model(save_dir, checkpoint):
    """The run's last live weights (engine state of a Single run) in a model rebuilt from the checkpoint's config."""
    model = build_model(**checkpoint["build_kwargs"])
    tag = (save_dir / "checkpoints" / "latest").read_text().strip()
    model.load_state_dict(torch.load(save_dir / "checkpoints" / tag / "engine.pt", weights_only=True)["model"])
    return model.eval()


def test_s2ef_trains_and_its_checkpoint_reloads_to_identical_outputs(demo_world, tmp_path):
    out = train_s2ef.main(flags(demo_world, tmp_path / "run", "s2ef_few", "--ema_decay", "0"))
    assert out["step"] == 2 and {"energy_mae", "force_mae", "loss"} <= set(out["valid"])
    loaded = sfm.load_checkpoint(tmp_path / "run" / "model.pt")
    meta = loaded.checkpoint
    assert type(loaded).__name__ == "S2EFModel" and not loaded.training
    assert meta["task"] == "s2ef" and meta["args"]["forces"] == "direct" and "Cu" in meta["dictionary"]
    assert float(loaded.normalizer.std) != 1.0 and meta["normalizer"]["std"] == pytest.approx(
        float(loaded.normalizer.std)
    )
    batch = collate([LmdbDataset(demo_world / "s2ef_few" / "val_id")[i] for i in range(3)])
    got, want = loaded.predict(batch), live_model(tmp_path / "run", meta).predict(batch)
    assert torch.equal(got["energy"], want["energy"]) and torch.equal(got["forces"], want["forces"])


def test_backbone_overrides_reach_the_checkpoint(demo_world, tmp_path):
    train_s2ef.main(
        flags(demo_world, tmp_path / "run", "s2ef_few", "--backbone", "grid_resolution=10", "max_neighbors=none")
    )
    loaded = sfm.load_checkpoint(tmp_path / "run" / "model.pt")
    assert loaded.backbone.cfg.grid_resolution == 10 and loaded.backbone.cfg.max_neighbors is None
    assert loaded.backbone.grid_nodes.to_grid.shape[0] == 100  # a 10 x 10 grid


def test_s2ef_on_is2re_with_conservative_forces(demo_world, tmp_path):
    out = train_s2ef.main(
        flags(
            demo_world,
            tmp_path / "run",
            "is2re",
            "--data_kind",
            "is2re",
            "--forces",
            "conservative",
            "--total_num_steps",
            "1",
            "--activation_checkpointing",
        )
    )
    assert out["nonfinite_steps"] == 0 and {"energy_loss", "force_loss"} <= set(out["train"])
    assert sfm.load_checkpoint(tmp_path / "run" / "model.pt").checkpoint["build_kwargs"]["checkpoint"] is True


@pytest.mark.parametrize("forces", ["conservative", "direct"])
def test_fine_tuning_starts_from_a_direct_checkpoint(demo_world, tmp_path, capsys, forces):
    direct = tmp_path / "direct" / "model.pt"
    train_s2ef.main(flags(demo_world, direct.parent, "s2ef_few", "--total_num_steps", "1"))
    start = sfm.load_checkpoint(direct)
    fine = flags(demo_world, tmp_path / "fine", "s2ef_few", "--forces", forces, "--init_from", str(direct))
    out = train_s2ef.main([*fine, "--total_num_steps", "1", "--max_lr", "1e-12", "--ema_decay", "0"])
    tuned = sfm.load_checkpoint(tmp_path / "fine" / "model.pt")
    assert out["step"] == 1 and tuned.forces_mode == forces
    assert (tuned.force_head is None) == (forces == "conservative")
    assert set(tuned.state_dict()) <= set(start.state_dict())  # the direct head too, when fine-tuning direct
    assert (
        tuned.checkpoint["init_from"] == str(direct)
        and tuned.checkpoint["normalizer"] == start.checkpoint["normalizer"]
    )
    for name, weight in tuned.state_dict().items():  # a step at lr 1e-12 leaves the direct run's weights
        assert torch.allclose(weight, start.state_dict()[name], atol=1e-8), name
    with pytest.raises(SystemExit):  # another architecture: refused, naming the field and the file
        train_s2ef.main(
            flags(demo_world, tmp_path / "other", "s2ef_few", "--init_from", str(direct), "--backbone", "lmax=1")
        )
    err = capsys.readouterr().err
    assert f"--init_from: {direct}: another model than this run builds (lmax: 2 there, 1 here)" in err
    assert not (tmp_path / "other" / "model.pt").exists()


def test_energy_branch_fine_tuning_moves_the_energy_alone(demo_world, tmp_path, capsys):
    direct = tmp_path / "direct" / "model.pt"
    train_s2ef.main(flags(demo_world, direct.parent, "s2ef_few", "--total_num_steps", "1"))
    start = sfm.load_checkpoint(direct)
    fine = flags(demo_world, tmp_path / "fine", "s2ef_few", "--init_from", str(direct), "--energy_branch", "1")
    train_s2ef.main([*fine, "--total_num_steps", "2", "--max_lr", "1e-2", "--ema_decay", "0"])
    tuned = sfm.load_checkpoint(tmp_path / "fine" / "model.pt")
    assert tuned.checkpoint["build_kwargs"]["energy_branch"] == 1 and len(tuned.energy_blocks) == 1
    moved = {name for name, weight in start.state_dict().items() if not torch.equal(weight, tuned.state_dict()[name])}
    assert moved and all(name.startswith("energy_head.") for name in moved)  # the trunk and force head are the start's
    trunk_last = {k.split(".", 3)[3]: v for k, v in start.state_dict().items() if k.startswith("backbone.blocks.1.")}
    branch = {k.split(".", 2)[2]: v for k, v in tuned.state_dict().items() if k.startswith("energy_blocks.0.")}
    assert branch.keys() == trunk_last.keys() and any(not torch.equal(branch[k], trunk_last[k]) for k in branch)
    batch = collate([LmdbDataset(demo_world / "s2ef_few" / "val_id")[i] for i in range(3)])
    got, was = tuned.predict(batch), start.predict(batch)
    assert torch.allclose(got["forces"], was["forces"], atol=1e-6) and not torch.allclose(got["energy"], was["energy"])
    again = flags(demo_world, tmp_path / "again", "s2ef_few", "--init_from", str(tmp_path / "fine" / "model.pt"))
    with pytest.raises(SystemExit):  # a branched model goes on with its branch, not without it
        train_s2ef.main([*again, "--energy_branch", "2"])
    assert "has an energy branch of 1 blocks, not 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_s2ef.main(flags(demo_world, tmp_path / "fresh", "s2ef_few", "--energy_branch", "1"))
    assert "--energy_branch needs --init_from" in capsys.readouterr().err


def test_diffusion_trains_resumes_and_reloads(demo_world, tmp_path):
    run = tmp_path / "run"
    train_diff.main(flags(demo_world, run, "is2re", "--ema_decay", "0"))
    first = sfm.load_checkpoint(run / "model.pt")
    out = train_diff.main(flags(demo_world, run, "is2re", "--ema_decay", "0", "--resume", "--total_num_steps", "3"))
    assert out["step"] == 3 and {"coord", "lattice"} <= set(out["valid"])
    loaded = sfm.load_checkpoint(run / "model.pt")
    assert type(loaded).__name__ == "DiffusionModel" and loaded.checkpoint["config"]["resumed_at_step"] == 2
    with pytest.raises(FileExistsError, match="pass --resume"):  # a run is never overwritten
        train_diff.main(flags(demo_world, run, "is2re"))
    for name, buf in first.named_buffers():  # the prior fitted at the start is kept, not refitted
        assert torch.equal(buf, dict(loaded.named_buffers())[name]), name
    batch = collate([LmdbDataset(demo_world / "is2re" / "val_id")[i] for i in range(2)])
    live = live_model(run, loaded.checkpoint)
    losses = []
    for model in (loaded, live):
        torch.manual_seed(0)
        with torch.no_grad():
            losses.append(model.loss(batch)[0])
    assert torch.equal(*losses)


@pytest.mark.parametrize(
    "entry, bad, message",
    [
        (train_s2ef, ["--strategy", "Zero4"], "invalid choice: 'Zero4'"),
        (train_s2ef, ["--train_batch_size", "0"], "must be >= 1"),
        (train_s2ef, ["--max_lr=-1e-3"], "--max_lr: must be in (0.0, inf)"),
        (train_s2ef, ["--ema_decay", "1"], "--ema_decay: must be in [0.0, 1.0)"),
        (
            train_s2ef,
            ["--total_num_steps", "0", "--total_num_epochs", "0"],
            "give --total_num_epochs or --total_num_steps",
        ),
        (train_s2ef, ["--forces", "both"], "invalid choice: 'both'"),
        (train_s2ef, ["--model_type", "huge"], "invalid choice: 'huge'"),
        (train_s2ef, ["--forces", "conservative", "--strategy", "Zero3"], "use Zero2, Zero1 or DDP"),
        (train_diff, ["--train_data_path", "/no/such/lmdb"], "--train_data_path /no/such/lmdb: no such file"),
        (train_diff, ["--mode_probs", "csp=0.5,dream=0.5"], "unknown modes ['dream']"),
        (train_diff, ["--placement_prob", "2"], "placement_prob must be in [0, 1]"),
        (train_diff, ["--target", "pos", "--placement_prob", "0.5"], "it needs target='pos_relaxed'"),
        (train_diff, ["--given_tags", "slab"], "--given_tags must be comma-separated integers"),
        (train_diff, ["--target", "pos_init"], "invalid choice: 'pos_init'"),
        (train_s2ef, ["--backbone", "grid=10"], "expected FIELD=VALUE with FIELD one of"),
        (train_s2ef, ["--backbone", "dictionary=x"], "expected FIELD=VALUE with FIELD one of"),
        (train_diff, ["--backbone", "sphere_channels=wide"], "sphere_channels: expected int, got 'wide'"),
        (train_s2ef, ["--backbone", "grid_resolution=9"], "grid resolution must be even, got 9"),
    ],
)
def test_bad_flags_exit_with_a_clear_message(demo_world, tmp_path, capsys, entry, bad, message):
    with pytest.raises(SystemExit) as exit_info:
        entry.main(flags(demo_world, tmp_path / "run", "is2re", *bad))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_local_launcher_on_cpu(demo_world, tmp_path):
    env = {
        **os.environ,
        "DEMO_DIR": str(demo_world),
        "SAVE_DIR": str(tmp_path / "run"),
        "MODEL_TYPE": "tiny",
        "BATCH_SIZE": "2",
    }
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "train_oc20_local.sh"), "--total_num_steps", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "--strategy Single" in r.stderr and (tmp_path / "run" / "model.pt").is_file()


def test_s2ef_launcher_zero2_on_two_cpu_processes(demo_world, tmp_path):
    env = {
        **os.environ,
        "DEMO_DIR": str(demo_world),
        "SAVE_DIR": str(tmp_path / "run"),
        "MODEL_TYPE": "tiny",
        "BATCH_SIZE": "2",
        "NPROC": "2",
        "STRATEGY": "Zero2",
        "VALID_DATA": "",
    }
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "train_s2ef.sh"), "--total_num_steps", "2", "--log_interval", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    loaded = sfm.load_checkpoint(tmp_path / "run" / "model.pt")
    assert loaded.checkpoint["config"]["world_size"] == 2 and loaded.checkpoint["step"] == 2


def test_diffusion_trains_under_bf16_autocast(demo_world, tmp_path):
    out = train_diff.main(flags(demo_world, tmp_path / "run", "is2re", "--bf16", "--total_num_steps", "1"))
    assert out["nonfinite_steps"] == 0 and torch.isfinite(torch.tensor(out["train"]["loss"]))


def test_dict_path_is_the_dictionary_the_model_embeds_with(demo_world, tmp_path):
    """--dict_path reaches the embedding; an element outside it is refused by the calculator and
    relax_batch, naming it; a checkpoint whose stored dictionary is not its model's is refused."""
    from ase.data import chemical_symbols

    from sfm.pipeline.checkpoint import save_consolidated
    from sfm.relax import SFMCalculator, batch_to_atoms, relax_batch

    frames = [*LmdbDataset(demo_world / "s2ef_few" / "train"), *LmdbDataset(demo_world / "s2ef_few" / "val_id")]
    present = sorted({int(z) for d in frames for z in d.atomic_numbers})
    tokens = ["<pad>", "<mask>", *(chemical_symbols[z] for z in present)]
    (tmp_path / "small.txt").write_text("\n".join(tokens) + "\n")
    train_s2ef.main(
        flags(
            demo_world,
            tmp_path / "run",
            "s2ef_few",
            "--dict_path",
            str(tmp_path / "small.txt"),
            "--total_num_steps",
            "1",
        )
    )
    model = sfm.load_checkpoint(tmp_path / "run" / "model.pt")
    assert model.checkpoint["dictionary"] == model.checkpoint["build_kwargs"]["dictionary"] == tokens
    assert model.backbone.atom_tokens.num_tokens == len(tokens)
    iron = frames[0].clone()
    iron.atomic_numbers[0] = 26
    atoms = batch_to_atoms(collate([iron]))[0]
    atoms.calc = SFMCalculator(tmp_path / "run" / "model.pt")
    with pytest.raises(KeyError, match=r"\['Fe'\] are not in the model's dictionary"):
        atoms.get_potential_energy()
    with pytest.raises(KeyError, match=r"\['Fe'\] are not in the model's dictionary"):
        relax_batch(model, collate([iron]), steps=1)
    save_consolidated(
        tmp_path / "mixed.pt",
        state_dict=build_model("tiny").state_dict(),
        build_kwargs=build_model("tiny").build_kwargs,
        meta={"task": "s2ef", "dictionary": tokens},
    )
    with pytest.raises(
        ValueError,
        match=rf"mixed\.pt: the checkpoint's dictionary \({len(tokens)} tokens\) is not "
        "the one its model embeds with",
    ):
        sfm.load_checkpoint(tmp_path / "mixed.pt")
