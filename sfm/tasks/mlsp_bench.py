"""Does the model relax a placement to where the true potential does? (AdsorbML's ML+SP)

    python -m sfm.tasks.mlsp_bench --checkpoint S2EF/model.pt --data data/demo/is2re/val_id \
        [--num_systems 100] [--optimizer lbfgs] [--steps 300] [--fmax 0.05] [--json OUT.json]

For each system of an IS2RE split with references (``pos_relaxed``, ``y_relaxed``: the true
potential's relaxation of the initial placement ``pos``, with L-BFGS in the demo world), the
model relaxes ``pos`` (batched, L-BFGS by default like the reference, subsurface fixed), then EMT, the demo world's true potential, gives a single point at
the model's minimum on the reference's energy scale (:class:`~sfm.relax.emt_judge.EMTJudge`).

Rows, side by side on the same systems:

- ``model relaxation + EMT single point`` (ML+SP);
- ``initial placement, EMT single point``: no relaxation at all (the floor);
- ``EMT relaxation`` (the truth: ``pos_relaxed``, ``y_relaxed``; distance 0 by definition).

Columns: ``success`` (AdsorbML: the single-point energy at most 0.1 eV above ``y_relaxed``;
lower counts too), ``within_0.1`` (|dE| <= 0.1 eV), the median |dE| (eV), the model's own
energy error at its minimum (|E_model - E_EMT|, eV), the adsorbate's mean minimum-image
distance to the reference relaxed adsorbate (median, A) and ADwT on adsorbate atoms, the
fraction converged and the mean optimiser steps. Paired per system, so the rows compare. The JSON keeps each system's ML+SP result
(``per_system``: success, dE, distance, the model's own error at its minimum, steps, EMT's
largest force there); ``--baseline OTHER.json`` (another model's report on the same data) adds the
success difference with a paired bootstrap interval over the common systems;
``--compare A.json B.json`` prints that difference for two existing reports without relaxing anything.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sfm import load_checkpoint
from sfm.data import LmdbDataset, collate
from sfm.data.structure import ADSORBATE_TAG, fixed_mask, sid_of
from sfm.eval.oc20 import adwt, mean_distance
from sfm.eval.paired import paired_bootstrap
from sfm.relax.emt import EMTFn
from sfm.relax.emt_judge import EMTJudge
from sfm.relax.relax_structures import RelaxSettings, add_relax_flags, relax_input, relax_settings, relax_structures


def adsorbate_distance(structures, pos) -> np.ndarray:
    """[S] mean minimum-image distance (A) of each structure's adsorbate atoms (tag 2) at ``pos``
    to the reference ``pos_relaxed``."""
    batch = collate(structures)
    final = torch.cat([p.double() for p in pos])
    ref = torch.cat([d.pos_relaxed.double() for d in structures])
    return mean_distance(final, ref, batch.cell.double(), batch.batch, batch.tags == ADSORBATE_TAG).numpy()


def emt_largest_force(structures, pos) -> np.ndarray:
    """[S] EMT's largest force (eV/A) on a free atom of each structure at ``pos``: where it is well
    above the relaxation's fmax, the model stopped in a minimum the true potential does not have."""
    batch = collate([relax_input(d, i, p) for i, (d, p) in enumerate(zip(structures, pos))])
    forces = EMTFn()(batch)[1].double().norm(dim=-1)
    free = ~fixed_mask(batch)
    return np.array([float(forces[(batch.batch == i) & free].max()) for i in range(len(structures))])


def row(name: str, sp: np.ndarray, ref: np.ndarray, distance: np.ndarray, model_energy=None, relaxed=None) -> dict:
    delta = sp - ref
    out = {
        "placements": name,
        "systems": len(ref),
        "success": float(np.mean(delta <= 0.1)),
        "within_0.1": float(np.mean(np.abs(delta) <= 0.1)),
        "median_abs_dE": float(np.median(np.abs(delta))),
        "median_distance": float(np.median(distance)),
        "adwt": adwt(distance),
    }
    if model_energy is not None:
        out["median_model_error"] = float(np.median(np.abs(model_energy - sp)))
    if relaxed is not None:
        out["converged"] = float(np.mean([r["converged"] for r in relaxed]))
        out["steps_mean"] = float(np.mean([r["relax_steps"] for r in relaxed]))
    return out


def run(model, data, num_systems: int = 100, settings: RelaxSettings = RelaxSettings()) -> dict:
    """The three rows (module docstring) on the first ``num_systems`` entries of ``data``;
    ``model``: an S2EF model or any energy/force function :func:`relax_structures` takes."""
    dataset = LmdbDataset(data)
    structures = [dataset[i] for i in range(min(num_systems, len(dataset)))]
    missing = [i for i, d in enumerate(structures) if "pos_relaxed" not in d or "y_relaxed" not in d]
    if missing:
        raise ValueError(
            f"{data}: entries {missing[:5]} have no pos_relaxed / y_relaxed (a test split?); "
            "ML+SP needs the reference relaxation"
        )
    start = time.perf_counter()
    relaxed = relax_structures(model, structures, settings, desc="model relaxation")
    relax_s = time.perf_counter() - start
    judge, references = EMTJudge(settings=settings), {sid_of(d): d for d in structures}
    ref = np.array([float(d.y_relaxed) for d in structures])
    final = [r["pos"] for r in relaxed]
    sp = np.asarray(judge(structures, final, references)[0], dtype=float)
    model_energy = np.array([r["energy"] for r in relaxed])
    emt_fmax = emt_largest_force(structures, final)
    sp_initial = np.asarray(judge(structures, [d.pos for d in structures], references)[0], dtype=float)
    distance = adsorbate_distance(structures, final)
    rows = [
        row(
            "model relaxation + EMT single point",
            sp,
            ref,
            distance,
            model_energy,
            relaxed,
        ),
        row(
            "initial placement, EMT single point",
            sp_initial,
            ref,
            adsorbate_distance(structures, [d.pos for d in structures]),
        ),
        row("EMT relaxation (the reference)", ref, ref, np.zeros(len(ref))),
    ]
    ok = sp - ref <= 0.1  # AdsorbML's success, per system
    per_system = {
        "sid": [str(sid_of(d)) for d in structures],
        "success": ok.tolist(),
        "dE": (sp - ref).tolist(),
        "distance": distance.tolist(),
        "model_error": (model_energy - sp).tolist(),  # the model's energy at its minimum minus EMT's there
        "steps": [int(r["relax_steps"]) for r in relaxed],
        "emt_fmax": emt_fmax.tolist(),  # EMT's largest force on a free atom at the model's minimum (eV/A)
    }
    return {
        "data": str(data),
        "settings": vars(settings),
        "rows": rows,
        "emt_fmax_median": by_outcome(emt_fmax, ok, np.median),  # EMT's largest force at the model's minimum
        "emt_fmax_above_3fmax": by_outcome(emt_fmax > 3 * settings.fmax, ok, np.mean),  # the share above 3 fmax
        "per_system": per_system,
        "model_relax_wall_s": relax_s,
    }


def by_outcome(values: np.ndarray, ok: np.ndarray, fn) -> dict:
    """``fn`` of ``values`` over the successful systems and over the failed ones (None where none)."""
    return {name: float(fn(values[sel])) if sel.any() else None for name, sel in (("successful", ok), ("failed", ~ok))}


def compare(report: dict, baseline: dict, resamples: int = 2000) -> dict:
    """ML+SP success of ``report`` minus ``baseline`` (two runs' reports) on their common systems,
    paired bootstrap over systems (:func:`sfm.eval.paired.paired_bootstrap`)."""
    a = dict(zip(report["per_system"]["sid"], report["per_system"]["success"]))
    b = dict(zip(baseline["per_system"]["sid"], baseline["per_system"]["success"]))
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two ML+SP reports share no system (sid)")
    boot = paired_bootstrap(
        np.array([a[s] for s in common], float), np.array([b[s] for s in common], float), np.mean, resamples
    )
    return {"systems": len(common), "success": float(np.mean([a[s] for s in common])), **boot}


def difference_line(diff: dict, baseline: str) -> str:
    low, high = diff["interval_90"]
    return (
        f"ML+SP success minus {baseline}'s on {diff['systems']} common systems: {diff['difference']:+.3f} "
        f"(90 % bootstrap interval {low:+.3f} .. {high:+.3f}, P(> 0) {diff['p_difference_positive']:.2f})"
    )


def emt_fmax_line(report: dict, fmax: float) -> str:
    """EMT's largest force at the model's minima, successful and failed systems apart."""
    med, above = report["emt_fmax_median"], report["emt_fmax_above_3fmax"]
    parts = [
        f"{k} {med[k]:.3f} eV/A (above {3 * fmax:g}: {above[k]:.0%})"
        for k in ("successful", "failed")
        if med[k] is not None
    ]
    return "EMT's largest force at the model's minimum, median: " + ", ".join(parts)


def format_table(report: dict) -> str:
    cols = [
        "success",
        "within_0.1",
        "median_abs_dE",
        "median_model_error",
        "median_distance",
        "adwt",
        "converged",
        "steps_mean",
    ]
    lines = ["| placements | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for r in report["rows"]:
        cells = [f"{r[c]:.3f}" if isinstance(r.get(c), float) else "" for c in cols]
        lines.append(f"| {r['placements']} ({r['systems']} systems) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", help="S2EF checkpoint (model.pt); required unless --compare")
    p.add_argument(
        "--data",
        help="IS2RE split with pos_relaxed / y_relaxed (e.g. data/demo/is2re/val_id); required unless --compare",
    )
    p.add_argument("--num_systems", type=int, default=100)
    add_relax_flags(p)
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument(
        "--baseline",
        default=None,
        help="another run's --json report: print the success difference, paired over the common systems",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("REPORT", "BASELINE"),
        help="two runs' --json reports: print the first's success minus the second's, paired over their "
        "common systems, and stop (nothing relaxed)",
    )
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    if args.compare:
        reports = []
        for path in args.compare:
            try:
                reports.append(json.loads(Path(path).read_text()))
            except (OSError, ValueError) as err:
                p.error(f"--compare {path}: not a readable mlsp_bench report ({err})")
            if "per_system" not in reports[-1]:
                p.error(f"--compare {path}: no per_system results (not an mlsp_bench --json report)")
        try:
            diff = compare(*reports)
        except ValueError as err:  # no common system
            p.error(f"--compare {' '.join(args.compare)}: {err}")
        print(difference_line(diff, args.compare[1]))
        return diff
    if not args.checkpoint or not args.data:
        p.error("--checkpoint and --data are required (unless --compare)")
    settings = relax_settings(args)
    report = {
        "checkpoint": args.checkpoint,
        **run(load_checkpoint(args.checkpoint), args.data, args.num_systems, settings),
    }
    print(format_table(report))
    print(emt_fmax_line(report, args.fmax))
    if args.baseline:
        diff = compare(report, json.loads(Path(args.baseline).read_text()))
        report["versus_baseline"] = {"baseline": args.baseline, **diff}
        print(difference_line(diff, args.baseline))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
