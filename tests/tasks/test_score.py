"""Relax-and-rank (sfm/eval/ranking.py) and its command (sfm/tasks/score.py): outputs (LMDB, CSV, JSON), ranking, success@k against hand-made references, the EMT
judge's reference convention, random placements, bad inputs."""

import csv
import json

import ase.io
import numpy as np
import pytest
import torch

import sfm
from sfm.data import LmdbDataset, collate, write_lmdb
from sfm.data.anomaly import bonds
from sfm.data.lattice import cart_to_frac, minimum_image
from sfm.data.random_placement import random_placements
from sfm.eval.ranking import RankingConfig, rank_samples
from sfm.eval.ranking_files import first_samples, read_samples, write_outputs
from sfm.relax import batch_to_atoms
from sfm.relax.emt_judge import EMTJudge, emt_offset_from_recipe, emt_offset_from_reference
from sfm.relax.relax_structures import RelaxSettings
from sfm.tasks import place_random
from sfm.tasks import score as score_task
from tests.tasks.test_eval_s2ef import save_tiny

QUIET_EMT = EMTJudge(settings=RelaxSettings(progress=False))


def x_energy(batch):
    """Energy = mean x of the structure's atoms (eV), zero forces: no relaxation moves anything."""
    e = torch.zeros(batch.num_graphs, dtype=batch.pos.dtype).index_add_(0, batch.batch, batch.pos[:, 0])
    return e / torch.bincount(batch.batch, minlength=batch.num_graphs), torch.zeros_like(batch.pos)


def shifted(entry, dx, sample_idx, lift=0.0):
    """``entry`` translated by dx along x (energy + dx under x_energy); ``lift`` A raises the adsorbate."""
    d = entry.clone()
    d.pos = d.pos + torch.tensor([dx, 0.0, 0.0])
    d.pos[d.tags == 2, 2] += lift
    d.sample_idx = sample_idx
    return d


@pytest.fixture(scope="module")
def entries(demo_world):
    return list(LmdbDataset(demo_world / "is2re" / "val_id"))


def test_ranking_success_and_outputs(entries, tmp_path):
    a, b = entries[:2]
    base = [float(x_energy(collate([e]))[0]) for e in (a, b)]
    # system a: energies base+0.3, base+0.0, base-0.5 (desorbed: disqualified), base+0.5
    # system b: base+0.2, base-0.1
    samples = [
        shifted(a, 0.3, 0),
        shifted(a, 0.0, 1),
        shifted(a, -0.5, 2, lift=8.0),
        shifted(a, 0.5, 3),
        shifted(b, 0.2, 0),
        shifted(b, -0.1, 1),
    ]
    refs = {int(a.sid): a.clone(), int(b.sid): b.clone()}
    refs[int(a.sid)].y_relaxed = base[0] - 0.05  # best qualified (idx 1) is 0.05 above: success@1
    refs[int(b.sid)].y_relaxed = base[1] - 0.25  # best is 0.15 above: never a success
    cfg = RankingConfig(steps=5, ks=(1, 2, 9), progress=False, batch_size=4)
    scored = rank_samples(x_energy, samples, cfg, refs)

    sys_a, sys_b = scored.systems
    assert sys_a["ranked_sample_idx"] == [1, 0, 3, 2] and sys_b["ranked_sample_idx"] == [1, 0]
    assert sys_a["anomalies"]["desorbed"] == 1 and sys_a["qualified"] == 3
    assert sys_a["best_energy"] == pytest.approx(base[0], abs=1e-5)
    assert sys_a["success@1"] and not sys_b["success@1"] and not sys_b["success@4"]
    s = scored.summary
    assert (s["success@1"], s["success@2"], s["success@4"]) == (0.5, 0.5, 0.5) and "success@9" not in s
    assert s["systems"] == 2 and s["samples"] == 6 and s["k"] == 4 and s["converged_fraction"] == 1.0
    assert s["anomalies"] == {"desorbed": 1, "dissociated": 0, "surface_changed": 0, "intercalated": 0}
    assert s["disqualified"] == 1

    kept = first_samples(samples[::-1], 2)  # the two lowest sample_idx of each system, file order kept
    assert [(int(d.sid), d.sample_idx) for d in kept] == [
        (int(b.sid), 1),
        (int(b.sid), 0),
        (int(a.sid), 1),
        (int(a.sid), 0),
    ]

    # without disqualification the desorbed sample ranks first and succeeds at any k
    loose = rank_samples(x_energy, samples, RankingConfig(steps=0, exclude=(), progress=False), refs)
    assert loose.systems[0]["ranked_sample_idx"] == [2, 1, 0, 3] and loose.summary["success@1"] == 0.5

    paths = write_outputs(scored, tmp_path / "out", {"note": "test"})
    lmdb = LmdbDataset(paths["lmdb"])
    assert len(lmdb) == 6
    first = lmdb[0]
    assert int(first.sid) == int(a.sid) and first.rank == 0 and first.sample_idx == 1
    assert torch.allclose(first.pos, first.pos_initial) and first.force.shape == first.pos.shape
    assert [lmdb[i].rank for i in range(6)] == [0, 1, 2, 3, 0, 1]
    assert lmdb[0].energy < lmdb[1].energy < lmdb[2].energy and lmdb[3].disqualified and lmdb[3].desorbed
    rows = list(csv.DictReader(open(paths["samples_csv"])))
    assert [int(r["sample_idx"]) for r in rows] == [1, 0, 3, 2, 1, 0]
    assert rows[0]["delta"] and float(rows[0]["delta"]) == pytest.approx(0.05, abs=1e-5)
    assert rows[3]["desorbed"] == "True" and rows[3]["disqualified"] == "True"
    systems = list(csv.DictReader(open(paths["systems_csv"])))
    assert systems[0]["ranked_sample_idx"] == "1 0 3 2" and systems[0]["success@1"] == "True"
    assert {"best_energy", "max_fmax", "converged", "desorbed", "success@4"} <= set(systems[0])
    report = json.loads(paths["json"].read_text())
    assert report["summary"]["success@1"] == 0.5 and report["config"] == {"note": "test"}
    assert report["systems"][0]["best_judge_energy"] is None  # nan -> null


def test_emt_judge_uses_the_demo_reference_convention(entries):
    """Initial structures judged by EMT (offset from the reference's pos_relaxed / y_relaxed) get
    their stored y_init; the recipe offset (clean slab relaxed + gas references) equals the one
    the reference implies."""
    samples = [e.clone() for e in entries]
    refs = {int(e.sid): e for e in entries}
    scored = rank_samples(x_energy, samples, RankingConfig(steps=0, exclude=(), progress=False), refs, QUIET_EMT)
    for row, e in zip(scored.rows, entries):
        assert row["judge_energy"] == pytest.approx(float(e.y_init), abs=1e-4)
    gap = np.array([float(e.y_init) - float(e.y_relaxed) for e in entries])
    assert scored.summary["success@1"] == pytest.approx(np.mean(gap <= 0.1))
    assert scored.summary["success_energy"] == "judge"
    e = entries[0]
    assert emt_offset_from_recipe(e) == pytest.approx(emt_offset_from_reference(e), abs=1e-3)


def test_cli_on_a_tiny_checkpoint_with_extxyz_samples(demo_world, tmp_path):
    ckpt = save_tiny(tmp_path / "model.pt", demo_world)
    val = demo_world / "is2re" / "val_id"
    samples_lmdb = tmp_path / "random.lmdb"
    assert place_random.main(["--data_path", str(val), "--k", "2", "--out", str(samples_lmdb)]) == 4
    samples = read_samples(samples_lmdb)
    xyz = tmp_path / "samples.extxyz"
    atoms = batch_to_atoms(collate(samples))
    for a, d in zip(atoms, samples):
        a.info.update(sid=int(d.sid), sample_idx=int(d.sample_idx))
    ase.io.write(xyz, atoms, format="extxyz")
    from_xyz = read_samples(xyz)
    for d, x in zip(samples, from_xyz):
        assert torch.allclose(d.pos, x.pos, atol=1e-5) and torch.equal(d.fixed, x.fixed) and torch.equal(d.tags, x.tags)
        assert (int(d.sid), int(d.sample_idx)) == (int(x.sid), int(x.sample_idx))
    outs = []
    for name, path in (("lmdb", samples_lmdb), ("xyz", xyz)):
        report = score_task.main(
            [
                "--checkpoint",
                str(ckpt),
                "--samples",
                str(path),
                "--reference",
                str(val),
                "--out",
                str(tmp_path / name),
                "--steps",
                "3",
                "--k",
                "1",
                "2",
                "--no_progress",
            ]
        )
        outs.append(report)
        assert (tmp_path / name / "scored.lmdb").exists()
    assert outs[0]["summary"]["samples"] == 4 and "success@2" in outs[0]["summary"]
    e0 = [s["best_energy"] for s in outs[0]["systems"]]
    e1 = [s["best_energy"] for s in outs[1]["systems"]]
    assert e0 == pytest.approx(e1, abs=1e-4)


def test_ranked_samples_come_best_first(demo_world, tmp_path):
    """--ranked (predict only): each system's samples renumbered by the model's energy, lowest
    first, at their input positions; a sample reader (sfm.eval.gen_metrics.group_samples, as
    sfm.eval.success reads them) takes them in that order."""
    from sfm.eval.gen_metrics import group_samples

    ckpt = save_tiny(tmp_path / "model.pt", demo_world)
    val = demo_world / "is2re" / "val_id"
    samples_lmdb = tmp_path / "random.lmdb"
    place_random.main(["--data_path", str(val), "--k", "3", "--out", str(samples_lmdb)])
    argv = ["--checkpoint", str(ckpt), "--samples", str(samples_lmdb), "--out", str(tmp_path / "scored")]
    score_task.main(
        argv + ["--steps", "0", "--exclude", "", "--ranked", str(tmp_path / "ranked.lmdb"), "--no_progress"]
    )
    inputs = {(int(d.sid), int(d.sample_idx)): d for d in read_samples(samples_lmdb)}
    ranked = group_samples(LmdbDataset(tmp_path / "ranked.lmdb"))
    assert sorted(ranked) == sorted({sid for sid, _ in inputs})
    for sid, group in ranked.items():
        energies = [float(d.energy) for d in group]
        assert energies == sorted(energies) and [int(d.sample_idx) for d in group] == [0, 1, 2]
        assert sorted(int(d.source_sample_idx) for d in group) == [0, 1, 2]
        for d in group:
            torch.testing.assert_close(d.pos, inputs[(sid, int(d.source_sample_idx))].pos)


def test_random_placements_keep_the_slab_and_a_rigid_adsorbate(entries):
    for e in entries:
        got = list(random_placements([e], 3, seed=1))
        again = list(random_placements([e], 3, seed=1))
        ads = e.tags == 2
        cell = e.cell[0]
        for d, d2 in zip(got, again):
            assert torch.equal(d.pos, d2.pos) and torch.equal(d.pos[~ads], e.pos[~ads])
            assert np.array_equal(
                bonds(e.atomic_numbers[ads], e.pos[ads], cell), bonds(d.atomic_numbers[ads], d.pos[ads], cell)
            )
            dfrac = cart_to_frac((d.pos[ads][:, None] - e.pos[~ads][None]).reshape(-1, 3).double(), cell.double())
            assert minimum_image(dfrac, cell.double()).norm(dim=-1).min() == pytest.approx(2.0, abs=1e-3)
        assert not torch.equal(got[0].pos, got[1].pos)


def test_bad_inputs(demo_world, entries, tmp_path, capsys):
    nosid = entries[0].clone()
    del nosid.sid
    write_lmdb(tmp_path / "nosid.lmdb", [nosid])
    with pytest.raises(ValueError, match="no 'sid'"):
        read_samples(tmp_path / "nosid.lmdb")
    (tmp_path / "s.cif").write_text("")
    with pytest.raises(ValueError, match="expected an OC20 LMDB"):
        read_samples(tmp_path / "s.cif")
    with pytest.raises(FileNotFoundError):
        read_samples(tmp_path / "missing.lmdb")
    fe = entries[0].clone()
    fe.atomic_numbers = torch.full_like(fe.atomic_numbers, 26)
    fe.sample_idx = 0
    with pytest.raises(ValueError, match="EMT does not cover"):
        rank_samples(x_energy, [fe], RankingConfig(progress=False), judge=QUIET_EMT)
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        rank_samples(x_energy, [fe], RankingConfig(exclude=("melted",), progress=False))
    other = entries[0].clone()
    other.sid = 10**6
    write_lmdb(tmp_path / "other.lmdb", [other])
    with pytest.raises(SystemExit):
        score_task.main(
            [
                "--checkpoint",
                str(tmp_path / "nope.pt"),
                "--samples",
                str(tmp_path / "other.lmdb"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert "no such file or directory" in capsys.readouterr().err
    ckpt = save_tiny(tmp_path / "m.pt", demo_world)
    with pytest.raises(SystemExit):
        score_task.main(
            [
                "--checkpoint",
                str(ckpt),
                "--samples",
                str(tmp_path / "other.lmdb"),
                "--out",
                str(tmp_path / "o"),
                "--reference",
                str(demo_world / "is2re" / "val_id"),
            ]
        )
    assert "not in --reference" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        score_task.main(
            [
                "--checkpoint",
                str(ckpt),
                "--samples",
                str(tmp_path / "other.lmdb"),
                "--out",
                str(tmp_path / "o"),
                "--reference",
                str(demo_world / "is2re" / "val_id"),
                "--drop_unmatched",
            ]
        )
    assert "no sample sid is in --reference" in capsys.readouterr().err


def test_reference_without_y_relaxed_says_success_is_skipped(demo_world, entries, tmp_path, capsys):
    """A test split as --reference: no success@k, and the summary says so and why."""
    test_split = [e.clone() for e in entries]
    for d in test_split:
        del d.y_relaxed, d.pos_relaxed
    write_lmdb(tmp_path / "test.lmdb", test_split)
    write_lmdb(tmp_path / "samples.lmdb", entries)
    ckpt = save_tiny(tmp_path / "m.pt", demo_world)
    report = score_task.main(
        [
            "--checkpoint",
            str(ckpt),
            "--samples",
            str(tmp_path / "samples.lmdb"),
            "--reference",
            str(tmp_path / "test.lmdb"),
            "--out",
            str(tmp_path / "o"),
            "--steps",
            "0",
            "--no_progress",
        ]
    )
    summary = report["summary"]
    assert not any(k.startswith("success@") for k in summary)
    n = len(entries)
    assert summary["success_skipped"] == f"{n} of {n} systems: their reference entry has no y_relaxed (a test split?)"
    assert f"placement success skipped for {n} of {n} systems" in capsys.readouterr().out


class IndexJudge:
    """A judge that is not EMT: energy = the sample's index (eV), positions left as they are."""

    name = "index"

    def check(self, samples):
        pass

    def __call__(self, samples, final_pos, references):
        return [float(d.sample_idx) for d in samples], None


def test_any_judge_object_is_handed_to_ranking(entries):
    a = entries[0]
    samples = [shifted(a, dx, i) for i, dx in enumerate((0.3, 0.0, 0.6))]
    ranked = rank_samples(
        x_energy, samples, RankingConfig(steps=0, exclude=(), progress=False), {int(a.sid): a}, IndexJudge()
    )
    assert [r["sample_idx"] for r in ranked.rows] == [1, 0, 2]  # ranked by model energy, judged apart
    assert [r["judge_energy"] for r in ranked.rows] == [1.0, 0.0, 2.0]
    assert ranked.summary["judge"] == "index" and ranked.summary["success_energy"] == "judge"
    assert all("pos_judge" not in rec for rec in ranked.records)


def test_model_predicting_nan_is_refused(demo_world, entries, tmp_path):
    model = sfm.load_checkpoint(save_tiny(tmp_path / "m.pt", demo_world))
    model.normalizer.mean.fill_(float("nan"))  # fitted on a NaN label
    with pytest.raises(ValueError, match=r"predicts a non-finite energy or force .* normaliser holds non-finite mean"):
        rank_samples(model, entries, RankingConfig(steps=2, progress=False))


def test_dense_reference_is_each_systems_minimum(dense_world, tmp_path):
    """--dense: the reference of a system is its lowest valid dense placement (the mapping's
    reference); that placement's own relaxed structure, judged by an EMT single point, is a
    success@1 against it; a folder that is no dense split is named."""
    from sfm.eval.success import load_mapping, references

    split = dense_world / "is2re_dense" / "test_id"
    exclude = "desorbed,surface_changed,intercalated"
    best = references(load_mapping(split.parent), "test_id", exclude.split(","))
    samples = []
    for d in LmdbDataset(split / "data.lmdb"):
        if int(d.sid) in best and float(d.y_relaxed) == best[int(d.sid)]:
            s = d.clone()
            s.pos, s.sample_idx = d.pos_relaxed, 0
            samples.append(s)
    write_lmdb(tmp_path / "best.lmdb", samples)
    ckpt = save_tiny(tmp_path / "model.pt", dense_world)
    argv = ["--checkpoint", str(ckpt), "--samples", str(tmp_path / "best.lmdb"), "--out", str(tmp_path / "out")]
    argv += ["--steps", "0", "--judge", "emt", "--exclude", exclude, "--no_progress"]
    report = score_task.main(argv + ["--reference", str(split), "--dense"])
    assert {int(s["sid"]): s["ref_energy"] for s in report["systems"]} == pytest.approx(best)
    assert [s["best_judge_energy"] for s in report["systems"]] == pytest.approx(
        [s["ref_energy"] for s in report["systems"]], abs=1e-4
    )
    assert report["summary"]["success@1"] == 1.0
    with pytest.raises(SystemExit):
        score_task.main(argv + ["--reference", str(dense_world / "is2re" / "test_id"), "--dense"])
