"""Rattled S2EF frames (sfm.data.rattle): energies and forces are ASE EMT's at the perturbed
positions on the frame's reference, only free atoms move, the adsorbate shifts rigidly in the
surface plane, the output folder reads as one dataset, bad input is refused with nothing written."""

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.optimize import BFGS

from sfm.data import LmdbDataset, atoms_to_data, data_to_atoms, write_lmdb
from sfm.data.rattle import main, perturb, rattled_frames

REFERENCE = 3.25  # eV subtracted from every EMT energy, as the demo world's E_slab + E_gas


def trajectory(sid: int, site: str) -> list:
    """Frames of an EMT relaxation of CO on a Cu(111) slab (bottom layer fixed), y = E - REFERENCE."""
    slab = fcc111("Cu", (2, 2, 3), vacuum=8.0)
    slab.set_tags([0] * 4 + [1] * 8)
    add_adsorbate(slab, molecule("CO"), 2.2, site)
    slab.set_tags([0] * 4 + [1] * 8 + [2, 2])
    slab.set_constraint(FixAtoms(indices=range(4)))
    slab.calc = EMT()
    frames = []
    opt = BFGS(slab, logfile=None)
    for step in range(4):
        e, f = slab.get_potential_energy(), slab.get_forces(apply_constraint=False)
        frames.append(
            atoms_to_data(slab, sid=sid, fid=step, y=e - REFERENCE, force=torch.tensor(f, dtype=torch.float32))
        )
        opt.run(fmax=0.01, steps=1)
    return frames


@pytest.fixture(scope="module")
def frames():
    return trajectory(1, "ontop") + trajectory(2, "fcc")


def test_emt_energies_and_forces_on_the_frames_reference(frames):
    out = list(rattled_frames(frames, 3, shift=0.5, sigma=0.02, seed=0, progress=False))
    assert len(out) == 6 and [int(d.sid) for d in out] == [1, 1, 1, 2, 2, 2]
    for d in out:
        a = data_to_atoms(d)
        a.calc = EMT()
        assert float(d.y) == pytest.approx(a.get_potential_energy() - REFERENCE, abs=1e-4)
        np.testing.assert_allclose(d.force.numpy(), a.get_forces(apply_constraint=False), atol=1e-4)
        source = next(f for f in frames if int(f.sid) == int(d.sid) and int(f.fid) == int(d.fid))
        assert torch.equal(d.pos[d.fixed], source.pos[d.fixed])  # fixed atoms stay
        assert not torch.allclose(d.pos[~d.fixed], source.pos[~d.fixed])
        assert set(d.keys()) == set(source.keys())  # the same fields: the shards batch together


def test_the_adsorbate_shifts_rigidly_in_the_surface_plane(frames):
    rng = np.random.default_rng(0)
    for frame in frames:
        pos = perturb(frame, rng, shift=0.7, sigma=0.0)
        move = (pos - frame.pos.double())[frame.tags == 2]
        assert torch.allclose(move, move[0].expand_as(move), atol=1e-5)  # rigid
        assert abs(float(move[0, 2])) < 1e-5 and float(move[0].norm()) <= 0.7 + 1e-6  # in plane, within shift
        assert torch.equal(pos[frame.tags != 2], frame.pos.double()[frame.tags != 2])  # sigma 0: the slab stays


def test_cli_folder_reads_as_one_dataset_and_bad_input(frames, tmp_path, capsys):
    write_lmdb(tmp_path / "train" / "data.lmdb", frames)
    out = tmp_path / "rattled"
    counts = main(["--data", str(tmp_path / "train"), "--out", str(out), "--per_system", "2", "--no_progress"])
    assert counts == {"frames": 8, "rattled": 4}
    assert sorted(p.name for p in out.iterdir()) == ["frames.lmdb", "rattled.lmdb"]
    assert len(LmdbDataset(out)) == 12
    again = tmp_path / "again"
    main(["--data", str(tmp_path / "train"), "--out", str(again), "--per_system", "2", "--no_progress"])
    first, second = LmdbDataset(out / "rattled.lmdb"), LmdbDataset(again / "rattled.lmdb")
    assert all(torch.equal(first[i].pos, second[i].pos) for i in range(4))  # the seed decides
    with pytest.raises(SystemExit):  # exists: refused, untouched
        main(["--data", str(tmp_path / "train"), "--out", str(out), "--no_progress"])
    assert len(LmdbDataset(out)) == 12
    no_forces = [f.clone() for f in frames]
    for f in no_forces:
        del f.force
    write_lmdb(tmp_path / "is2re.lmdb", no_forces)
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path / "is2re.lmdb"), "--out", str(tmp_path / "bad"), "--no_progress"])
    assert "lack y / force" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert not list(tmp_path.glob("bad.tmp-*"))
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "bad"), "--no_progress"])
