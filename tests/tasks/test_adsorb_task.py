"""End to end: `python -m sfm.tasks.adsorb` on a demo-world slab with EMT (module:factory), on
a slab cut from a bulk file with tiny sfm checkpoints, and on a relaxer that makes every
placement desorb; tables, files, anomaly labels, energies (checked with ASE EMT), resume."""

import csv
import json

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

import sfm
from sfm.data import Dictionary, LmdbDataset
from sfm.data.anomaly import detect
from sfm.data.demo import gas_references
from sfm.data.placements import oc20_adsorbate
from sfm.models import build_model
from sfm.pipeline.adsorb import Relaxer
from sfm.pipeline.checkpoint import save_consolidated
from sfm.tasks.adsorb import main

EMT_SPEC = "ase.calculators.emt:EMT"
COLUMNS = ["index", "source", "energy", "adsorption_energy", "converged", "steps", "fmax", "anomalies", "rank"]


class Lift(EMT):
    """EMT plus a 10 eV/A upward push on adsorbate atoms (tag 2): every relaxation desorbs."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        super().calculate(atoms, properties, system_changes or ["positions", "numbers", "cell"])
        self.results["forces"] = self.results["forces"].copy()
        self.results["forces"][atoms.get_tags() == 2, 2] += 10.0


def tiny_checkpoint(path, head, task, without=()):
    """An untrained tiny checkpoint; its dictionary lacks the elements in ``without``."""
    torch.manual_seed(0)
    tokens = [t for t in Dictionary.load().tokens if t not in without]
    model = build_model("tiny", head=head, dictionary=tokens)  # the model embeds with the dictionary it stores
    save_consolidated(
        path,
        state_dict=model.state_dict(),
        build_kwargs=model.build_kwargs,
        meta={"task": task, "dictionary": tokens, "args": {}},
    )
    return str(path)


def demo_slab(demo_world, tmp_path):
    """(slab extxyz path, adsorbate name) of the first demo train system; its top layer tagged
    as the surface (as fairchem tags exposed atoms: the demo's two-layer surface of an alloy gives
    pymatgen over 100 heuristic sites), its subsurface held as the demo holds it."""
    entry = LmdbDataset(demo_world / "is2re" / "train")[0]
    keep = (entry.tags != 2).numpy()
    pos = entry.pos.double().numpy()[keep]
    slab = ase.Atoms(
        entry.atomic_numbers.numpy()[keep],
        pos,
        cell=entry.cell[0].double().numpy(),
        pbc=True,
        tags=(pos[:, 2] > pos[:, 2].max() - 0.7).astype(int),
    )
    slab.set_constraint(FixAtoms(mask=entry.fixed.numpy()[keep]))
    path = tmp_path / "slab.extxyz"
    slab.write(path)
    mapping = json.loads((demo_world / "data_mapping.json").read_text())
    return path, mapping[str(int(entry.sid))]["adsorbate"]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_demo_slab_with_emt(demo_world, tmp_path, monkeypatch):
    slab_path, adsorbate = demo_slab(demo_world, tmp_path)
    out = tmp_path / "out"
    argv = [
        "--slab",
        str(slab_path),
        "--adsorbate",
        adsorbate,
        "--heuristic",
        "--random",
        "3",
        "--relaxer",
        EMT_SPEC,
        "--optimizer",
        "lbfgs",
        "--batch_size",
        "4",
        "--out",
        str(out),
        "--no_progress",
        "--top_k",
        "2",
    ]
    result = main(argv)
    rows = read_csv(out / "placements.csv")
    assert list(rows[0]) == COLUMNS
    assert [r["source"] for r in rows].count("random") == 3 and rows[0]["source"] == "heuristic"
    assert result.summary["energy"] == "total" and "ASE LBFGS loop" in result.summary["relaxer"]

    # anomalies: recomputed from the written structures with the detector, against the relaxed clean slab
    frames = ase.io.read(out / "relaxed.extxyz", ":")
    initial = ase.io.read(out / "work" / "placements.extxyz", ":")
    clean = ase.io.read(out / "work" / "clean_slab.extxyz")
    n = len(clean)
    for row, init, final in zip(rows, initial, frames):
        given = np.concatenate([init.positions[:n], oc20_adsorbate(adsorbate).atoms.positions])
        flags = detect(final.numbers, final.get_tags(), given, final.positions, final.cell.array, clean.positions)
        assert row["anomalies"] == ";".join(flags.labels())
        assert (row["rank"] == "") == flags.any
        assert final.get_forces().shape == (len(final), 3)

    # energies: ASE EMT on the written structures, the demo world's gas references (BFGS, vacuum)
    gas = gas_references()
    clean.calc = EMT()
    e_slab = clean.get_potential_energy()
    for row, final in zip(rows, frames):
        final.calc = EMT()
        e = final.get_potential_energy()
        assert float(row["energy"]) == pytest.approx(e, abs=1e-6)
        e_ads = e - e_slab - sum(gas[s] for s in final.get_chemical_symbols()[n:])
        assert float(row["adsorption_energy"]) == pytest.approx(e_ads, abs=0.02)

    ranked = sorted((r for r in rows if r["rank"]), key=lambda r: int(r["rank"]))
    assert [int(r["rank"]) for r in ranked] == list(range(len(ranked)))
    assert [float(r["adsorption_energy"]) for r in ranked] == sorted(float(r["adsorption_energy"]) for r in ranked)
    cifs = sorted(p.name for p in out.glob("best_*.cif"))
    assert cifs == [f"best_{r}.cif" for r in range(min(2, len(ranked)))]
    report = (out / "report.md").read_text()
    for name in [line.split("](figures/")[1].split(")")[0] for line in report.splitlines() if "](figures/" in line]:
        assert (out / "figures" / name).stat().st_size > 1000
    doc = json.loads((out / "placements.json").read_text())
    assert len(doc["rows"]) == len(rows) and doc["summary"]["references"]["elements"].keys() == gas.keys()

    # a rerun resumes: nothing is relaxed again and the table is the same
    monkeypatch.setattr(Relaxer, "relax", lambda *a, **k: pytest.fail("relaxed again on resume"))
    main(argv)
    assert read_csv(out / "placements.csv") == rows
    with pytest.raises(SystemExit) as err:  # other settings into the same folder are refused
        main([*argv[:-4], "--random", "4", *argv[-4:]])
    assert err.value.code == 2


def test_bulk_cut_with_tiny_checkpoints_through_the_api(tmp_path, capsys):
    bulk("Pt", "fcc", a=3.92).write(tmp_path / "Pt.cif")
    diffusion = tiny_checkpoint(tmp_path / "diff.pt", "diffusion", "diffusion")
    s2ef = tiny_checkpoint(tmp_path / "s2ef.pt", "s2ef", "s2ef")
    result = sfm.adsorb(
        tmp_path / "out",
        relaxer=s2ef,
        adsorbate="*CO",
        bulk=str(tmp_path / "Pt.cif"),
        miller=(1, 0, 0),
        heuristic=True,
        random=2,
        diffusion=diffusion,
        num_generated=3,
        sample_steps=2,
        t_start=0.5,
        steps=3,
        progress=False,
    )
    sources = [r["source"] for r in result.rows]
    heuristic = sources.count("heuristic")
    assert sources == ["generated"] * 3 + ["refined"] * heuristic + ["heuristic"] * heuristic + ["random"] * 2
    assert result.summary["energy"] == "referenced" and "batched" in result.summary["relaxer"]
    assert all(r["adsorption_energy"] == r["energy"] and r["steps"] <= 3 for r in result.rows)
    assert "(100) cut from" in result.summary["slab"]
    written = read_csv(tmp_path / "out" / "placements.csv")
    assert [w["source"] for w in written] == sources
    frames = ase.io.read(tmp_path / "out" / "relaxed.extxyz", ":")
    assert [f.info["source"] for f in frames] == sources
    ranked = [r for r in result.rows if r["rank"] is not None]
    assert (
        len(result.best) == len(ranked)
        and result.best[0].info["index"] == min(ranked, key=lambda r: r["rank"])["index"]
    )


def test_emt_judges_the_best_placements_of_a_checkpoint(tmp_path):
    """AdsorbML's ML+SP: EMT single points on the top_k relaxed by the model, referenced with EMT's
    own relaxed clean slab and gas references (checked with ASE EMT and the demo's references)."""
    from ase.build import fcc111

    fcc111("Cu", (3, 3, 4), vacuum=8.0, periodic=True).write(tmp_path / "cu.cif")
    s2ef = tiny_checkpoint(tmp_path / "s2ef.pt", "s2ef", "s2ef")
    out = tmp_path / "out"
    result = main(
        [
            "--slab",
            str(tmp_path / "cu.cif"),
            "--adsorbate",
            "*O",
            "--random",
            "4",
            "--relaxer",
            s2ef,
            "--steps",
            "3",
            "--judge",
            EMT_SPEC,
            "--top_k",
            "2",
            "--out",
            str(out),
            "--no_progress",
        ]
    )
    frames = ase.io.read(out / "relaxed.extxyz", ":")
    clean = ase.io.read(out / "work" / "judge_clean_slab.extxyz")
    clean.calc = EMT()
    gas = gas_references()
    judged = [r for r in result.rows if r["judge_energy"] is not None]
    assert sorted(r["rank"] for r in judged) == [0, 1]
    for r in judged:
        atoms = frames[r["index"]]
        atoms.calc = EMT()
        assert r["judge_energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
        expected = r["judge_energy"] - clean.get_potential_energy() - gas["O"]
        assert r["judge_adsorption_energy"] == pytest.approx(expected, abs=0.02)
    assert list(read_csv(out / "placements.csv")[0])[-2:] == ["judge_energy", "judge_adsorption_energy"]
    assert "Lowest judged adsorption energy" in (out / "report.md").read_text()


def test_every_placement_desorbed_is_reported(tmp_path):
    from ase.build import fcc111

    fcc111("Cu", (3, 3, 4), vacuum=8.0, periodic=True).write(tmp_path / "cu.cif")
    out = tmp_path / "out"
    result = main(
        [
            "--slab",
            str(tmp_path / "cu.cif"),
            "--adsorbate",
            "*O",
            "--heuristic",
            "--relaxer",
            "test_adsorb_task:Lift",
            "--steps",
            "25",
            "--out",
            str(out),
            "--no_progress",
        ]
    )
    assert result.rows and all(r["anomalies"].startswith("desorbed") and r["rank"] is None for r in result.rows)
    assert result.summary["best"] is None and "No valid placement" in (out / "report.md").read_text()
    assert not list(out.glob("best_*.cif"))


def test_cli_errors_name_the_input(tmp_path, capsys):
    bulk("Cu", "fcc", a=3.6, cubic=True).write(tmp_path / "bulk.cif")
    with pytest.raises(SystemExit) as err:
        main(["--slab", str(tmp_path / "bulk.cif"), "--heuristic", "--relaxer", EMT_SPEC, "--out", str(tmp_path / "o")])
    assert err.value.code == 2 and "bulk.cif" in capsys.readouterr().err
    s2ef = tiny_checkpoint(tmp_path / "s2ef.pt", "s2ef", "s2ef", without=("U",))
    (tmp_path / "ads.xyz").write_text("2\n\nU 0 0 0\nO 0 0 1.2\n")
    from ase.build import fcc111

    fcc111("Cu", (2, 2, 3), vacuum=8.0, periodic=True).write(tmp_path / "cu.cif")
    with pytest.raises(SystemExit):
        main(
            [
                "--slab",
                str(tmp_path / "cu.cif"),
                "--adsorbate",
                str(tmp_path / "ads.xyz"),
                "--binding",
                "0",
                "--heuristic",
                "--relaxer",
                s2ef,
                "--out",
                str(tmp_path / "o2"),
            ]
        )
    assert "does not know element(s) U" in capsys.readouterr().err


def test_benchmark_success_by_hand():
    from sfm.tasks.adsorb_bench import first_success, success, summarize

    def row(i, source, e, valid=True, steps=10):
        return {"index": i, "source": source, "adsorption_energy": e, "valid": valid, "steps": steps}

    rows = [
        row(0, "heuristic", -0.5),
        row(1, "heuristic", -1.0, valid=False),
        row(2, "heuristic", -0.95),
        row(3, "random", -0.2),
        row(4, "random", -0.92),
    ]
    best = -0.95  # the anomalous -1.0 does not count
    assert not success(rows, "heuristic", 1, best, 0.1) and not success(rows, "heuristic", 2, best, 0.1)
    assert success(rows, "heuristic", 3, best, 0.1) and success(rows, "random", 2, best, 0.1)
    assert first_success(rows, "heuristic", best, 0.1) == 3 and first_success(rows, "random", best, 0.01) is None
    s = summarize([{"rows": rows, "best": best}], 0.1)
    assert s["heuristic"]["success@1"] == 0.0 and s["heuristic"]["success@5"] == 1.0
    assert s["heuristic"]["anomaly_rate"] == pytest.approx(1 / 3) and s["random"]["relaxations_to_first_success"] == 2


def test_benchmark_command_runs_on_the_demo_world(demo_world, tmp_path):
    from sfm.tasks.adsorb_bench import main as bench

    s2ef = tiny_checkpoint(tmp_path / "s2ef.pt", "s2ef", "s2ef")
    report = bench(
        [
            "--data",
            str(demo_world / "is2re" / "train"),
            "--num_systems",
            "1",
            "--max_heuristic",
            "2",
            "--random",
            "2",
            "--steps",
            "15",
            "--timing_relaxer",
            s2ef,
            "--timing_systems",
            "1",
            "--timing_steps",
            "3",
            "--out",
            str(tmp_path / "bench"),
            "--no_progress",
        ]
    )
    assert set(report["by_source"]) <= {"heuristic", "random"} and report["timing"]["structures"] == 4
    assert report["timing"]["batched_mean_steps"] == report["timing"]["ase_loop_mean_steps"] == 3
    assert report["timing"]["max_abs_energy_difference_eV"] < 1e-3  # the same model, optimiser and steps
    assert (tmp_path / "bench" / "benchmark.md").read_text().startswith("# Adsorption search benchmark")
