"""Relabelled model relaxations (sfm.relax.relabel): each frame sits where the model's relaxation
of the system's first frame ended and carries ASE EMT's energy (on the frame's reference) and
forces there; the split's own frames are mixed in; the folder reads as one dataset; bad input is
refused with nothing written."""

import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT

from sfm.data import LmdbDataset, data_to_atoms, write_lmdb
from sfm.relax.emt import EMTFn
from sfm.relax.relabel import first_frames, main, relabelled_frames
from sfm.relax.relax_structures import RelaxSettings, relax_structures
from tests.data.test_rattle import REFERENCE, trajectory
from tests.tasks.test_eval_s2ef import save_tiny

LIFT = 0.3  # eV/A


def lifted(batch):
    """EMT plus a constant upward pull of LIFT on each adsorbate atom: a model whose minima EMT
    does not have."""
    energy, forces = EMTFn()(batch)
    adsorbate = batch.tags == 2
    energy = energy - LIFT * torch.zeros_like(energy).index_add(0, batch.batch[adsorbate], batch.pos[adsorbate, 2])
    forces[adsorbate, 2] += LIFT
    return energy, forces


@pytest.fixture(scope="module")
def frames():
    return trajectory(1, "ontop") + trajectory(2, "fcc") + trajectory(3, "hcp")


def test_frames_are_emt_at_the_models_minimum(frames):
    settings = RelaxSettings("lbfgs", fmax=0.02, steps=200, progress=False)
    out, counts = relabelled_frames(lifted, frames, 2, settings, seed=0)
    starts = first_frames(frames, 2, seed=0)
    assert counts == {"left_out": 0, "off_minimum": 2} and len(out) == 2 and [int(d.fid) for d in starts] == [0, 0]
    assert [int(d.sid) for d in out] == [int(d.sid) for d in starts]
    ends = relax_structures(lifted, starts, settings)
    for d, start, end in zip(out, starts, ends):
        assert torch.allclose(d.pos, end["pos"])  # where the model's relaxation ended
        a = data_to_atoms(d)
        a.calc = EMT()
        assert float(d.y) == pytest.approx(a.get_potential_energy() - REFERENCE, abs=1e-4)
        forces = a.get_forces(apply_constraint=False)
        np.testing.assert_allclose(d.force.numpy(), forces, atol=1e-4)
        assert np.abs(forces[d.tags == 2, 2]).sum() > 0.2  # EMT still pulls there: what the model must learn
        assert set(d.keys()) == set(start.keys())  # the split's fields: the shards batch together


def test_shift_moves_the_adsorbates_start_rigidly_in_plane(frames):
    out, _ = relabelled_frames(lifted, frames, 3, RelaxSettings(steps=0, progress=False), seed=0, shift=0.8)
    for d, start in zip(out, first_frames(frames, 3, seed=0)):
        move = (d.pos - start.pos)[d.tags == 2]
        assert torch.allclose(move, move[0].expand_as(move), atol=1e-5) and 0 < float(move[0].norm()) <= 0.8 + 1e-5
        assert abs(float(move[0, 2])) < 1e-5 and torch.equal(d.pos[d.tags != 2], start.pos[d.tags != 2])


def test_cli_folder_mix_and_bad_input(frames, tmp_path, capsys):
    train = tmp_path / "s2ef" / "train"
    write_lmdb(train / "data.lmdb", frames)
    ckpt = save_tiny(tmp_path / "model.pt", tmp_path)  # an untrained tiny model, normaliser fitted on the frames
    out = tmp_path / "relabel"
    args = ["--checkpoint", str(ckpt), "--data", str(train), "--steps", "3", "--no_progress"]
    counts = main([*args, "--out", str(out), "--num_systems", "2", "--mix", "2"])
    assert counts["relabelled"] == 2 and counts["left_out"] == 0 and counts["frames"] == 4
    assert sorted(p.name for p in out.iterdir()) == ["frames.lmdb", "relabelled.lmdb"]
    assert len(LmdbDataset(out)) == 6
    with pytest.raises(SystemExit):  # exists: refused, untouched
        main([*args, "--out", str(out)])
    assert len(LmdbDataset(out)) == 6
    no_fid = [f.clone() for f in frames]
    for f in no_fid:
        del f.fid
    write_lmdb(tmp_path / "nofid.lmdb", no_fid)
    with pytest.raises(SystemExit):
        main([*args[:2], "--data", str(tmp_path / "nofid.lmdb"), "--out", str(tmp_path / "bad"), "--no_progress"])
    assert "lack y / force / tags / sid / fid" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob("bad.tmp-*"))
    with pytest.raises(SystemExit):
        main([*args[2:], "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "bad")])
    assert "none.pt: no such file" in capsys.readouterr().err
