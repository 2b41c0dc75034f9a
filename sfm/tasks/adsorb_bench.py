"""Benchmark of the adsorption search on held-out demo systems: which placements find the best energy.

    python -m sfm.tasks.adsorb_bench --data data/demo/is2re/test_id --num_systems 8 \
        --relaxer ase.calculators.emt:EMT --max_heuristic 10 --random 10 \
        --diffusion runs/quickstart/diff/model.pt --num_generated 10 \
        --timing_relaxer runs/quickstart/s2ef/model.pt --out runs/adsorb_bench

For each of the first ``num_systems`` entries of an IS2RE split (a demo world's: the adsorbate
is read from its ``data_mapping.json``), the search of :mod:`sfm.pipeline.adsorb` runs on the
entry's slab (its tags and held atoms) with every source asked for, all relaxed by ``relaxer``
(EMT: the demo world's own energy, so "best" is exact for these placements). The best-known
energy of a system is the lowest valid (not anomalous) adsorption energy over all its placements
of all sources. A source succeeds at k when the lowest valid energy among its first k placements
(in the order made; k relaxations) is within ``threshold`` (0.1 eV) of that best (AdsorbML's
success, against the best of everything tried here, not a DFT minimum). Printed per source:
success@1/2/5/10, the mean number of relaxations until the first success (systems never reached
count as missing), anomaly rate, mean optimiser steps.

Timing (``timing_relaxer``, an S2EF checkpoint): the placements of the first ``timing_systems``
systems relaxed with the batched relaxer (``relax_batch``) and with ASE's loop over the same
model's ``SFMCalculator``, same optimiser, exactly ``timing_steps`` steps each (fmax 1e-9: none
stops early, so both do the same work): wall time of each, and the largest energy difference
between the two. Results go to ``out/benchmark.json`` and ``out/benchmark.md``
with the machine load (``os.getloadavg``). The per-system searches sit in ``out/systems/<sid>``
and resume on a rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
from ase import Atoms

from sfm.data import data_to_atoms
from sfm.data.structure import ADSORBATE_TAG
from sfm.pipeline.adsorb import SOURCES, AdsorbConfig, Relaxer, run_adsorb

KS = (1, 2, 5, 10)


def system_slab(entry, path: Path) -> Path:
    """The slab of an IS2RE entry (tags 0/1, its held atoms) written as extxyz at ``path``."""
    slab = data_to_atoms(entry)[(entry.tags != ADSORBATE_TAG).numpy()]
    path.parent.mkdir(parents=True, exist_ok=True)
    slab.write(path, format="extxyz")
    return path


def success(rows: list[dict], source: str, k: int, best: float, threshold: float) -> bool:
    """The lowest valid energy among the first k placements of ``source`` is within threshold of best."""
    mine = sorted((r for r in rows if r["source"] == source), key=lambda r: r["index"])[:k]
    energies = [r["adsorption_energy"] for r in mine if r["valid"]]
    return bool(energies) and min(energies) - best <= threshold


def first_success(rows: list[dict], source: str, best: float, threshold: float) -> int | None:
    """Relaxations of ``source`` (in order) until the first one within threshold of best; None if none."""
    mine = sorted((r for r in rows if r["source"] == source), key=lambda r: r["index"])
    for n, r in enumerate(mine, start=1):
        if r["valid"] and r["adsorption_energy"] - best <= threshold:
            return n
    return None


def summarize(systems: list[dict], threshold: float) -> dict:
    """Per source: success@k over systems, relaxations to first success, anomaly rate, mean steps."""
    out = {}
    for source in SOURCES:
        have = [s for s in systems if any(r["source"] == source for r in s["rows"])]
        if not have:
            continue
        rows = [r for s in have for r in s["rows"] if r["source"] == source]
        firsts = [first_success(s["rows"], source, s["best"], threshold) for s in have]
        reached = [f for f in firsts if f is not None]
        out[source] = {
            "systems": len(have),
            "placements_per_system": len(rows) / len(have),
            **{
                f"success@{k}": float(np.mean([success(s["rows"], source, k, s["best"], threshold) for s in have]))
                for k in KS
            },
            "reached": len(reached),
            "relaxations_to_first_success": float(np.mean(reached)) if reached else math.nan,
            "anomaly_rate": float(np.mean([not r["valid"] for r in rows])),
            "mean_steps": float(np.mean([r["steps"] for r in rows])),
        }
    return out


def timing(spec: str, structures: list[Atoms], cfg: AdsorbConfig) -> dict:
    """Wall time of the batched relaxation vs the ASE loop over the same structures and model."""
    out = {"structures": len(structures), "atoms": int(sum(len(a) for a in structures))}
    results = {}
    for mode, loop in (("batched", False), ("ase_loop", True)):
        relaxer = Relaxer(spec, cfg, loop=loop)
        start = time.perf_counter()
        results[mode] = relaxer.relax(structures, f"timing: {mode}")
        out[f"{mode}_wall_s"] = round(time.perf_counter() - start, 2)
        out[f"{mode}_mean_steps"] = float(np.mean([a.info["steps"] for a in results[mode]]))
    out["speedup"] = out["ase_loop_wall_s"] / out["batched_wall_s"]
    diff = [
        abs(a.get_potential_energy() - b.get_potential_energy())
        for a, b in zip(results["batched"], results["ase_loop"])
    ]
    out["max_abs_energy_difference_eV"] = float(max(diff))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", required=True, help="IS2RE split of a demo world (e.g. data/demo/is2re/test_id)")
    p.add_argument("--mapping", help="data_mapping.json (default: the demo world root above --data)")
    p.add_argument("--num_systems", type=int, default=8)
    p.add_argument("--relaxer", default="ase.calculators.emt:EMT", help="relaxer of the searches (as sfm.tasks.adsorb)")
    p.add_argument("--diffusion", help="diffusion checkpoint: generated (and, with --t_start < 1, refined) placements")
    p.add_argument("--num_generated", type=int, default=10)
    p.add_argument("--t_start", type=float, default=1.0)
    p.add_argument("--sample_steps", type=int, default=25)
    p.add_argument("--max_heuristic", type=int, default=10, help="heuristic sites per system (a uniform subset)")
    p.add_argument("--random", type=int, default=10)
    p.add_argument("--optimizer", choices=("fire", "lbfgs"), default="lbfgs")
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--threshold", type=float, default=0.1, help="eV, success window above the best-known energy")
    p.add_argument("--timing_relaxer", help="S2EF checkpoint to time batched vs ASE-loop relaxation with")
    p.add_argument("--timing_systems", type=int, default=2)
    p.add_argument("--timing_steps", type=int, default=50, help="optimiser steps of every timed relaxation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from sfm.data import LmdbDataset

    data = Path(args.data)
    dataset = LmdbDataset(data)
    mapping_path = Path(args.mapping) if args.mapping else data.parent.parent / "data_mapping.json"
    if not mapping_path.is_file():
        raise SystemExit(f"adsorb_bench: {mapping_path} not found (the demo world's data_mapping.json; give --mapping)")
    mapping = json.loads(mapping_path.read_text())
    out = Path(args.out)
    load_before = os.getloadavg()
    systems, start = [], time.perf_counter()
    for i in range(min(args.num_systems, len(dataset))):
        entry = dataset[i]
        sid = int(entry.sid)
        folder = out / "systems" / str(sid)
        cfg = AdsorbConfig(
            out=str(folder),
            relaxer=args.relaxer,
            adsorbate=mapping[str(sid)]["adsorbate"],
            slab=str(system_slab(entry, folder / "slab.extxyz")),
            heuristic=args.max_heuristic > 0,
            max_heuristic=args.max_heuristic or None,
            random=args.random,
            diffusion=args.diffusion,
            num_generated=args.num_generated if args.diffusion else 0,
            sample_steps=args.sample_steps,
            t_start=args.t_start,
            optimizer=args.optimizer,
            fmax=args.fmax,
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=not args.no_progress,
        )
        result = run_adsorb(cfg)
        valid = [r["adsorption_energy"] for r in result.rows if r["valid"]]
        print(
            f"system {sid} ({mapping[str(sid)]['catalyst']} {mapping[str(sid)]['facet']}, {cfg.adsorbate}): "
            f"{len(result.rows)} placements, {len(valid)} valid"
        )
        if valid:
            systems.append({"sid": sid, "rows": result.rows, "best": min(valid), "folder": folder})
    search_wall = time.perf_counter() - start
    report = {
        "data": str(data),
        "systems": len(systems),
        "systems_without_valid_placement": min(args.num_systems, len(dataset)) - len(systems),
        "relaxer": args.relaxer,
        "diffusion": args.diffusion,
        "threshold_eV": args.threshold,
        "search_wall_s": round(search_wall, 1),
        "by_source": summarize(systems, args.threshold),
    }
    if args.timing_relaxer:
        import ase.io

        structures = [
            a
            for s in systems[: args.timing_systems]
            for a in ase.io.read(s["folder"] / "work" / "placements.extxyz", ":")
        ]
        tcfg = AdsorbConfig(
            out=str(out),
            relaxer=args.timing_relaxer,
            optimizer=args.optimizer,
            fmax=1e-9,
            steps=args.timing_steps,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
        report["timing"] = {"relaxer": args.timing_relaxer, **timing(args.timing_relaxer, structures, tcfg)}
    report["load_average_before_after"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
    text = format_report(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "benchmark.md").write_text(text)
    print(text)
    return report


def format_report(report: dict) -> str:
    header = [
        "source",
        "placements/system",
        *(f"success@{k}" for k in KS),
        "relaxations to first success (reached)",
        "anomaly rate",
        "mean steps",
    ]
    intro = (
        f"relaxer {report['relaxer']}; diffusion {report['diffusion']}; success: within "
        f"{report['threshold_eV']} eV of the best valid energy over all placements of the system; "
        f"{report['systems_without_valid_placement']} system(s) without any valid placement left out"
    )
    lines = [
        f"# Adsorption search benchmark: {report['systems']} systems of {report['data']}",
        "",
        intro,
        "",
        "| " + " | ".join(header) + " |",
        "| --- " * len(header) + "|",
    ]
    for source, s in report["by_source"].items():
        cells = [
            source,
            f"{s['placements_per_system']:.1f}",
            *(f"{s[f'success@{k}']:.2f}" for k in KS),
            f"{s['relaxations_to_first_success']:.2f} ({s['reached']}/{s['systems']})",
            f"{s['anomaly_rate']:.2f}",
            f"{s['mean_steps']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    t = report.get("timing")
    if t:
        lines += [
            "",
            (
                f"Relaxation of {t['structures']} placements ({t['atoms']} atoms) with {t['relaxer']}: "
                f"batched {t['batched_wall_s']} s, ASE loop {t['ase_loop_wall_s']} s (x{t['speedup']:.2f}); "
                f"mean steps {t['batched_mean_steps']:.0f} vs {t['ase_loop_mean_steps']:.0f}; largest energy "
                f"difference {t['max_abs_energy_difference_eV']:.4f} eV"
            ),
        ]
    lines += [
        "",
        (
            f"search wall time {report['search_wall_s']} s; load average (1, 5, 15 min) before / after: "
            f"{report['load_average_before_after']}"
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
