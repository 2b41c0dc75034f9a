"""The user's own data: S2EF training and inpaint sampling straight from an ASE-LMDB and from an
extxyz written here (FixAtoms constraints, OC20 tags, EMT labels), and convert between the two."""

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

import sfm
from sfm.data import Dictionary, open_dataset
from sfm.data.convert import main as convert
from sfm.models import build_model
from sfm.pipeline.checkpoint import save_consolidated
from sfm.pipeline.sample_store import sample_key
from sfm.pipeline.sampling import GenConfig, run_sampling
from sfm.tasks import train_s2ef


def adslab(seed: int):
    """Cu(111) 2x2x3 with CO on top: tags 0 (two bottom layers, FixAtoms), 1 (top), 2 (CO); EMT labels."""
    atoms = fcc111("Cu", (2, 2, 3), vacuum=7.0)
    add_adsorbate(atoms, molecule("CO"), 1.9, "ontop")
    atoms.pbc = True
    layer = atoms.get_tags()  # ASE: 1 top layer ... 3 bottom; the adsorbate 0
    tags = np.where(layer == 0, 2, np.where(layer == 1, 1, 0))
    atoms.set_tags(tags)
    atoms.set_constraint(FixAtoms(mask=tags == 0))
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    atoms.info = {"sid": 500 + seed}
    return atoms


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """``{"aselmdb": path, "extxyz": glob}``, each holding the same 6 labelled structures."""
    out = tmp_path_factory.mktemp("own_data")
    frames = [adslab(s) for s in range(6)]
    ase.io.write(out / "mine_0.extxyz", frames[:4])
    ase.io.write(out / "mine_1.extxyz", frames[4:])
    with ase.db.connect(str(out / "mine.aselmdb")) as db:
        for atoms in frames:
            db.write(atoms, data={"sid": atoms.info["sid"]})
    return {"aselmdb": out / "mine.aselmdb", "extxyz": str(out / "mine_*.extxyz")}


@pytest.fixture(scope="module")
def diffusion_checkpoint(tmp_path_factory, sources):
    """A tiny untrained diffusion model with its prior fitted on the structures."""
    out = tmp_path_factory.mktemp("own_data_model") / "model.pt"
    torch.manual_seed(0)
    model = build_model("tiny", head="diffusion")
    model.fit_normalizer(list(open_dataset(sources["extxyz"])))
    save_consolidated(
        out,
        state_dict=model.state_dict(),
        build_kwargs=model.build_kwargs,
        meta={"task": "diffusion", "dictionary": Dictionary.load().tokens},
    )
    return out


@pytest.mark.parametrize("kind", ["aselmdb", "extxyz"])
def test_train_s2ef_and_sample_inpaint_from_own_file(sources, diffusion_checkpoint, tmp_path, kind):
    path = str(sources[kind])
    out = train_s2ef.main(
        [
            "--train_data_path",
            path,
            "--valid_data_path",
            path,
            "--save_dir",
            str(tmp_path / "s2ef"),
            "--model_type",
            "tiny",
            "--train_batch_size",
            "2",
            "--val_batch_size",
            "6",
            "--total_num_steps",
            "2",
            "--warmup_num_steps",
            "1",
            "--log_interval",
            "1",
        ]
    )
    assert out["step"] == 2 and np.isfinite(out["valid"]["energy_mae"]) and np.isfinite(out["valid"]["force_mae"])
    assert sfm.load_checkpoint(tmp_path / "s2ef" / "model.pt").checkpoint["args"]["train_data_path"] == path

    cfg = GenConfig(
        save_dir=str(tmp_path / "gen"),
        checkpoint=str(diffusion_checkpoint),
        data_path=path,
        mode="inpaint",
        sampler="ode",
        steps=2,
        num_samples=1,
        batch_size=3,
        max_inputs=3,
        progress=False,
    )
    assert run_sampling(cfg)["samples_written_this_run"] == 3
    inputs = {int(d.sid): d for d in open_dataset(path)}
    samples = list(sfm.data.LmdbDataset(tmp_path / "gen" / "samples"))
    assert sorted(sample_key(d) for d in samples) == [(500, 0), (501, 0), (502, 0)]
    for d in samples:
        ref = inputs[int(d.sid)]
        given = ref.tags != 2
        assert torch.equal(d.generated, ~given) and torch.equal(d.fixed, ref.fixed)
        assert torch.equal(d.pos[given], ref.pos[given]) and torch.equal(d.cell, ref.cell)


def test_convert_between_aselmdb_and_extxyz_keeps_fields(sources, tmp_path):
    convert([str(sources["aselmdb"]), "--out", str(tmp_path / "from_db.extxyz")])
    convert([str(sources["extxyz"]), "--out", str(tmp_path / "from_xyz.aselmdb")])
    pairs = [
        (open_dataset(tmp_path / "from_db.extxyz"), open_dataset(sources["aselmdb"]), 1e-8),
        (open_dataset(tmp_path / "from_xyz.aselmdb"), open_dataset(sources["extxyz"]), 0.0),
    ]
    for got_set, want_set, atol in pairs:
        assert len(got_set) == len(want_set) == 6
        for got, want in zip(got_set, want_set):
            assert (
                set(got.keys())
                == set(want.keys())
                == {"pos", "cell", "atomic_numbers", "natoms", "tags", "fixed", "y", "force", "sid"}
            )
            for name in ("pos", "cell", "force"):
                assert torch.allclose(got[name], want[name], rtol=0, atol=atol), name
            for name in ("atomic_numbers", "tags", "fixed"):
                assert torch.equal(got[name], want[name]), name
            assert (got.y, got.sid, got.natoms) == (want.y, want.sid, want.natoms)
    assert open_dataset(tmp_path / "from_xyz.aselmdb")[0].fixed.sum() == 8
