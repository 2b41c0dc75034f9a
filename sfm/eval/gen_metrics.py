"""Score a sample LMDB against a reference LMDB: validity, composition, match@k, ADwT, uniqueness,
lattice statistics (definitions in sfm/eval/generation.py and oc20.py).

    python -m sfm.eval.gen_metrics --samples SAMPLES.lmdb --reference REF.lmdb [--json out.json]
        [--stol 0.5 --ltol 0.3 --angle_tol 10] [--adwt_atoms generated|adsorbate|free|all]
        [--energy_key y_relaxed [--dense DIR/is2re_dense]]

Samples are matched to reference entries by `sid`; the samples of one sid are ordered by
their `sample_idx` (else by position in the file), so "@1" is each system's first sample and
"@k" its first k; "per_sample" scores every sample as its own draw (match rate and ADwT over
all samples: the @1 figures averaged over the k draws, a steadier estimate of them). The
reference structure is `pos_relaxed`: with a reference that has none (a test split), match rate,
ADwT and distances are skipped, with the reason in the output's "skipped" and in the table.
ADwT scores the generated atoms (the samples' `generated` mask, as sfm.pipeline.sampling
writes it; else the adsorbate, tags 2) and needs the sample's atoms in the reference's order
(same atomic_numbers sequence, as the samplers write them); other samples count as misses.
With --energy_key (a per-sample energy field written by scoring) and reference `y_relaxed`,
placement success@1/@k is added; with --dense, success is measured against the dense split's
minimum over all relaxed placements of each system (AdsorbML's reference, sfm.data.dense) on the
systems that have one, not against the reference's one `y_relaxed`.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from sfm.data import LmdbDataset, open_dataset, write_json
from sfm.data.lattice import as_cell, as_cells
from sfm.data.structure import ADSORBATE_TAG, fixed_mask, sid_of
from sfm.eval.generation import (
    ANGLE_TOL,
    LTOL,
    STOL,
    composition_kept,
    is_valid,
    lattice_stats,
    match_at_k,
    match_rms,
    structure_matcher,
    to_structure,
    uniqueness,
)
from sfm.eval.oc20 import adwt, mean_distance, success_at_k


def group_samples(samples) -> dict:
    """{sid: [Data, ...]} ordered by `sample_idx` (or file order)."""
    groups = defaultdict(list)
    for i, data in enumerate(samples):
        idx = int(data.sample_idx) if "sample_idx" in data else i
        groups[sid_of(data)].append((idx, data))
    return {sid: [d for _, d in sorted(group, key=lambda t: t[0])] for sid, group in groups.items()}


def adwt_mask(sample, ref, atoms: str) -> torch.Tensor:
    """[n] bool atoms scored by ADwT: generated (the sample's `generated` field, else as
    adsorbate), adsorbate (reference tags 2, else all), free (reference not fixed) or all."""
    if atoms == "generated":
        if "generated" in sample:
            return sample.generated.bool()
        atoms = "adsorbate"
    if atoms == "adsorbate" and "tags" in ref and (ref.tags == ADSORBATE_TAG).any():
        return ref.tags == ADSORBATE_TAG
    if atoms == "free":
        return ~fixed_mask(ref)
    return torch.ones(int(ref.natoms), dtype=torch.bool)


def sample_distance(sample, ref, atoms: str = "generated") -> float:
    """Mean minimum-image distance (A) of the scored atoms (`adwt_mask`) to the reference's
    `pos_relaxed`; nan when the atoms are not the reference's, in its order. ValueError naming
    the sid if the reference has no `pos_relaxed`."""
    if "pos_relaxed" not in ref:
        raise ValueError(
            f"reference sid {sid_of(ref)} has no pos_relaxed (a test split?): no distance to the relaxed structure"
        )
    if not torch.equal(sample.atomic_numbers.long(), ref.atomic_numbers.long()):
        return float("nan")
    ref_pos = ref.pos_relaxed.double()
    index = torch.zeros(len(ref_pos), dtype=torch.long)
    return mean_distance(
        sample.pos.double(), ref_pos, as_cells(ref.cell).double(), index, adwt_mask(sample, ref, atoms)
    ).item()


def needs_field(refs: dict, sids, field: str, metrics: str) -> str | None:
    """Why `metrics` are skipped (None: every reference of `sids` has `field`); ValueError naming
    the sids when only some have it (a reference mixing splits is damaged, not a test split)."""
    lacking = [sid for sid in sids if field not in refs[sid]]
    if not lacking:
        return None
    if len(lacking) < len(sids):
        raise ValueError(
            f"{len(lacking)} of {len(sids)} reference entries have no {field}, e.g. sid(s) "
            f"{lacking[:5]}: {metrics} need it for every system"
        )
    return f"the reference has no {field} (a test split?); {metrics} need it"


def generation_metrics(
    samples,
    references,
    stol=STOL,
    ltol=LTOL,
    angle_tol=ANGLE_TOL,
    adwt_atoms="generated",
    energy_key=None,
    dense_refs: dict | None = None,
) -> dict:
    """Metrics of `samples` (iterable of Data with sid) against `references` (iterable of Data).

    Metrics that need the reference's `pos_relaxed` (match, ADwT, distance) or `y_relaxed`
    (success) are left out when it has none, and `out["skipped"]` says which and why. `dense_refs`
    ({sid: eV}, sfm.eval.success.references): success against these minima instead."""
    refs = {sid_of(r): r for r in references}
    groups = group_samples(samples)
    missing = [sid for sid in groups if sid not in refs]
    groups = {sid: g for sid, g in groups.items() if sid in refs}
    if not groups:
        raise ValueError(f"no sample sid is in the reference ({len(missing)} sids unmatched)")
    skipped = skipped_metrics(refs, list(groups), energy_key is not None and dense_refs is None)
    no_relaxed = "match, ADwT, distance" in skipped
    K = max(len(g) for g in groups.values())
    S = len(groups)
    matcher = structure_matcher(stol, ltol, angle_tol)
    rms, dist, energy = (np.full((S, K), np.nan) for _ in range(3))
    present = np.zeros((S, K), dtype=bool)
    valid, kept, unique, cells = [], [], [], []
    for s, (sid, group) in enumerate(groups.items()):
        ref = refs[sid]
        ref_cell = as_cell(ref.cell).double()
        ref_struct = None if no_relaxed else to_structure(ref.atomic_numbers, ref.pos_relaxed.double(), ref_cell)
        structs = []
        for k, d in enumerate(group):
            present[s, k] = True
            pos, cell = d.pos.double(), as_cell(d.cell).double()
            cells.append(cell)
            ok = is_valid(pos, cell)
            valid.append(ok)
            kept.append(composition_kept(d.atomic_numbers, ref.atomic_numbers))
            struct = to_structure(d.atomic_numbers, pos, cell) if ok else None
            structs += [struct] if ok else []
            if not no_relaxed:
                rms[s, k] = match_rms(struct, ref_struct, matcher) if kept[-1] else np.nan
                dist[s, k] = sample_distance(d, ref, adwt_atoms)
            if energy_key is not None and energy_key in d:
                energy[s, k] = float(d[energy_key])
        if len(group) > 1:
            unique.append(uniqueness(structs, matcher) if structs else 0.0)
    best_dist = np.where(np.isnan(dist), np.inf, dist).min(axis=1)
    out = {
        "systems": S,
        "samples": len(valid),
        "k": K,
        "unmatched_sids": len(missing),
        "tolerances": {"stol": stol, "ltol": ltol, "angle_tol": angle_tol},
        "validity": float(np.mean(valid)),
        "composition_kept": float(np.mean(kept)),
        "uniqueness": float(np.mean(unique)) if unique else float("nan"),
        "lattice": lattice_stats(torch.stack(cells), torch.stack([as_cell(r.cell) for r in refs.values()])),
        "skipped": skipped,
    }
    if not no_relaxed:
        out.update(
            {
                "match@1": match_at_k(rms, 1),
                f"match@{K}": match_at_k(rms, K),
                "adwt@1": adwt(dist[:, 0]),
                f"adwt@{K}": adwt(best_dist),
                "adwt_atoms": adwt_atoms,
                "distance@1": median(dist[:, 0]),
                f"distance@{K}": median(best_dist),
                "per_sample": {"match_rate": float(np.isfinite(rms[present]).mean()), "adwt": adwt(dist[present])},
            }
        )
    if energy_key is not None and "success" not in skipped:
        out.update(placement_success(energy, [refs[sid] for sid in groups], list(groups), dense_refs))
    return out


def skipped_metrics(refs: dict, sids: list, wants_y_relaxed: bool) -> dict[str, str]:
    """``{metrics: why}`` of the metrics the references cannot give (:func:`needs_field`)."""
    skipped = {}
    no_relaxed = needs_field(refs, sids, "pos_relaxed", "match rate, ADwT and distances")
    if no_relaxed:
        skipped["match, ADwT, distance"] = no_relaxed
    no_energy = needs_field(refs, sids, "y_relaxed", "placement success") if wants_y_relaxed else None
    if no_energy:
        skipped["success"] = no_energy
    return skipped


def placement_success(energy: np.ndarray, refs: list, sids: list, dense_refs: dict | None) -> dict:
    """success@1 and success@K of ``energy`` ``[S, K]`` (eV) against each system's ``y_relaxed``
    or, given ``dense_refs``, its dense minimum (systems without one left out)."""
    K = energy.shape[1]
    if dense_refs is None:
        ref_e = np.array([float(r.y_relaxed) if "y_relaxed" in r else np.nan for r in refs])
    else:
        ref_e = np.array([dense_refs.get(sid, np.nan) for sid in sids])
        if np.isnan(ref_e).all():
            raise ValueError("no sample sid has a dense reference (is the dense split of this reference split?)")
    rows = ~np.isnan(ref_e)
    return {
        "success@1": success_at_k(energy[rows], ref_e[rows], 1),
        f"success@{K}": success_at_k(energy[rows], ref_e[rows], K),
        "success_reference": f"dense minimum ({int(rows.sum())} systems)" if dense_refs is not None else "y_relaxed",
    }


def median(dist: np.ndarray) -> float | None:
    """Median over systems of the mean atom distance to the reference (A; a missing one counts
    as infinitely far); None without any."""
    d = np.where(np.isnan(dist), np.inf, dist)
    return float(np.median(d)) if len(d) and np.isfinite(d).any() else None


def format_table(m: dict) -> str:
    """One-screen text table of `generation_metrics`'s output."""
    K = m["k"]
    rows = [
        ("systems / samples / k", f"{m['systems']} / {m['samples']} / {K}"),
        ("sample sids not in reference", str(m["unmatched_sids"])),
        ("validity", f"{m['validity']:.3f}"),
        ("composition kept", f"{m['composition_kept']:.3f}"),
    ]
    for k in sorted({1, K}):
        if f"match@{k}" in m:
            match = m[f"match@{k}"]
            rows.append((f"match rate @{k}  (rmse)", f"{match['match_rate']:.3f}  ({match['rmse']:.4f})"))
            rows.append((f"ADwT @{k}  ({m['adwt_atoms']} atoms)", f"{m[f'adwt@{k}']:.3f}"))
        if m.get(f"distance@{k}") is not None:
            rows.append((f"median distance @{k}  (A)", f"{m[f'distance@{k}']:.3f}"))
        if f"success@{k}" in m:
            rows.append((f"placement success @{k}", f"{m[f'success@{k}']:.3f}"))
    if "success_reference" in m:
        rows.append(("placement success against", m["success_reference"]))
    if K > 1 and "per_sample" in m:
        per = m["per_sample"]
        rows.append(("every sample: match rate / ADwT", f"{per['match_rate']:.3f} / {per['adwt']:.3f}"))
    rows.append(("uniqueness", f"{m['uniqueness']:.3f}"))
    rows += [(f"skipped: {what}", why) for what, why in m.get("skipped", {}).items()]
    tol = m["tolerances"]
    rows.append(("matcher stol / ltol / angle_tol", f"{tol['stol']} / {tol['ltol']} / {tol['angle_tol']}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append(f"\n{'lattice':<8}{'mean':>9}{'std':>8}{'ref mean':>10}{'ref std':>9}{'W1':>8}")
    for name, s in m["lattice"].items():
        lines.append(
            f"{name:<8}{s['mean']:>9.3f}{s['std']:>8.3f}{s['ref_mean']:>10.3f}{s['ref_std']:>9.3f}"
            f"{s['wasserstein']:>8.3f}"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", required=True, help="sample LMDB (file or folder of shards)")
    p.add_argument(
        "--reference",
        required=True,
        help="reference dataset, any format open_dataset reads (pos_relaxed used where present)",
    )
    p.add_argument("--json", help="write the metrics here")
    p.add_argument("--stol", type=float, default=STOL, help="site tolerance, units of (V/n)^(1/3)")
    p.add_argument("--ltol", type=float, default=LTOL, help="fractional lattice-length tolerance")
    p.add_argument("--angle_tol", type=float, default=ANGLE_TOL, help="lattice angle tolerance, degrees")
    p.add_argument(
        "--adwt_atoms",
        choices=["generated", "adsorbate", "free", "all"],
        default="generated",
        help="atoms ADwT scores: the sample's `generated` mask (else tags 2), tags 2, free, all",
    )
    p.add_argument("--energy_key", help="per-sample energy field for placement success@k")
    p.add_argument("--dense", help="dense split folder (DIR/is2re_dense): success@k against its minima")
    args = p.parse_args(argv)
    if args.dense and not args.energy_key:
        p.error("--dense needs --energy_key (the per-sample energies success is measured with)")
    dense_refs = None
    if args.dense:
        from sfm.eval.success import load_mapping, references  # sfm.eval.success builds on this module

        try:
            dense_refs = references(load_mapping(args.dense))
        except FileNotFoundError as err:
            p.error(str(err))
    m = generation_metrics(
        LmdbDataset(args.samples),
        open_dataset(args.reference),
        args.stol,
        args.ltol,
        args.angle_tol,
        args.adwt_atoms,
        args.energy_key,
        dense_refs,
    )
    print(format_table(m))
    if args.json:
        write_json(args.json, m)
    return m


if __name__ == "__main__":
    main()
