"""Placement success@k against the dense split's minimum (AdsorbML), with bootstrap intervals.

    python -m sfm.eval.success --dense DIR/is2re_dense [--split test_id] [--samples NAME=SAMPLES.lmdb ...]
        [--k 1,2,5,10] [--exclude desorbed,surface_changed,intercalated] [--resamples 2000] [--seed 0]
        [--workers 1] [--compare A:B ...] [--json out.json]

The reference of a system is the lowest relaxed energy over its dense placements that are not
disqualified (:func:`sfm.data.dense_reference.reference`: unconverged, or flagged with a kind in
``--exclude``; default desorbed, surface_changed, intercalated, as the demo world's scripts score;
AdsorbML's own list adds dissociated, which EMT's stretched X-H bonds trip on most placements);
systems without one take no part. A set of placements succeeds at k on a system when the lowest
energy among its first k relaxed placements that are not disqualified is within 0.1 eV of the
reference (lower counts too); a disqualified placement is never a success, as AdsorbML counts
anomalies (:func:`sfm.eval.oc20.successes`).

Placement sets:
- ``heuristic``, ``random``: the dense split's own heuristic-site and random placements, in
  their stored (shuffled) order, so "@k" is k of them drawn at random.
- ``--samples NAME=PATH``: sample LMDBs (as ``gen_oc20.sh`` writes them: ``sid``, ``sample_idx``,
  slab + adsorbate in the reference's atom order). Each system's first k samples are relaxed with
  EMT exactly as the dense placements were (:func:`judge_samples`, :mod:`sfm.relax.emt_judge`) and
  flagged against the relaxed clean slab: EMT relaxation is the judge. A sample that is one of
  the dense split's own placements, unmoved (its ``config_idx`` and initial positions, as
  ``sfm.tasks.score --ranked`` of the heuristic sites writes them), takes the stored relaxation,
  and a placement that two sets share (a set and its ranked copy) is relaxed once.

Reported per set and k: success (and its 90 % bootstrap interval over systems), the anomaly rate
of the first k placements (any AdsorbML flag or unconverged, whatever ``--exclude`` says), and for the samples the paired bootstrap difference to ``heuristic``
(:func:`sfm.eval.paired.paired_bootstrap`: the same resampled systems on both sides).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from sfm.data import LmdbDataset, data_to_atoms
from sfm.data.anomaly import KINDS
from sfm.data.dense_reference import EXCLUDE, disqualified, reference
from sfm.data.dense_targets import systems as dense_systems
from sfm.data.structure import sid_of
from sfm.eval.gen_metrics import group_samples
from sfm.eval.oc20 import successes
from sfm.eval.paired import paired_bootstrap
from sfm.relax.emt_judge import judge_placements

KS = (1, 2, 5, 10)
THRESHOLD = 0.1  # eV above the reference (AdsorbML)


def load_mapping(dense: str | Path) -> dict:
    """``is2re_dense/mapping.json`` of a dense split folder (keys: sid as str)."""
    path = Path(dense) / "mapping.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no dense split here (build one with python -m sfm.data.demo --dense)")
    return json.loads(path.read_text())


def references(mapping: dict, split: str | None = None, exclude=EXCLUDE) -> dict[int, float]:
    """``{sid: reference energy (eV)}`` of the systems (of ``split``) that have one."""
    best = {int(sid): reference(r, exclude) for sid, r in mapping.items() if split is None or r["split"] == split}
    return {sid: b["y_relaxed"] for sid, b in best.items() if b is not None}


def source_configs(mapping: dict, sids, source: str) -> list[list[dict]]:
    """Per sid, its ``source`` placements (``configs`` entries) in stored order."""
    return [[c for c in mapping[str(sid)]["configs"] if c["source"] == source] for sid in sids]


def stored_positions(dense: str | Path, split: str) -> dict[tuple[int, int], torch.Tensor]:
    """``{(sid, config_idx): initial positions}`` of every placement of a dense split."""
    return {(sid, int(e.config_idx)): e.pos for sid, _, entries in dense_systems(dense, split) for e in entries}


class StoredPositions:
    """:func:`stored_positions` of a dense split, read at the first look-up: never when no sample
    names a ``config_idx`` (generated or ML-relaxed sets)."""

    def __init__(self, dense: str | Path, split: str):
        self._args, self._positions = (dense, split), None

    def get(self, key):
        if self._positions is None:
            self._positions = stored_positions(*self._args)
        return self._positions.get(key)


def stored_result(sample, mapping: dict, positions) -> dict | None:
    """The dense split's own relaxation of ``sample`` when it is one of the split's placements,
    unmoved: its ``config_idx`` names one and its ``pos`` (what EMT would relax) is that
    placement's (as ``sfm.tasks.score --steps 0 --ranked`` writes the heuristic sites of
    ``sfm.data.dense_targets placements``; after an ML relaxation ``pos`` has moved); else None."""
    if "config_idx" not in sample:
        return None
    key, pos = (sid_of(sample), int(sample.config_idx)), sample.pos
    stored = positions.get(key)
    if stored is None or stored.shape != pos.shape or not torch.allclose(stored.double(), pos.double(), atol=1e-5):
        return None
    return {**mapping[str(key[0])]["configs"][key[1]], "stored": True}


def placement_key(d) -> tuple:
    """A placement's identity across sample sets: sid, elements and positions to 1e-4 A."""
    return sid_of(d), d.atomic_numbers.numpy().tobytes(), d.pos.double().numpy().round(4).tobytes()


def judge_samples(
    samples, mapping: dict, sids, k: int, workers: int = 1, positions=None, cache: dict | None = None
) -> dict[int, list[dict]]:
    """``{sid: [result per sample]}`` for the first k samples of each of ``sids`` the samples
    hold: each relaxed and flagged exactly as the dense placements were
    (:func:`sfm.relax.emt_judge.judge_placements`), energies referenced with the system's
    ``e_slab + e_gas``; systems spread over ``workers`` processes (the results do not depend on it).
    Nothing is relaxed twice: with ``positions`` (:class:`StoredPositions`), a sample that is one of
    the dense placements, unmoved, takes its stored relaxation (:func:`stored_result`); with
    ``cache`` (a dict shared over calls), a placement judged before (the same set in another
    order, e.g. ranked) takes that result, and each new result is added."""
    cache = {} if cache is None else cache
    groups = group_samples(samples)
    firsts = {sid: groups[sid][:k] for sid in sids if sid in groups}
    known = {
        sid: [stored_result(d, mapping, positions or {}) or cache.get(placement_key(d)) for d in group]
        for sid, group in firsts.items()
    }
    todo = {sid: [d for d, r in zip(group, known[sid]) if r is None] for sid, group in firsts.items()}
    todo = {sid: group for sid, group in todo.items() if group}
    jobs = [
        ([data_to_atoms(d) for d in group], mapping[str(sid)]["e_slab"] + mapping[str(sid)]["e_gas"])
        for sid, group in todo.items()
    ]
    for (sid, group), results in zip(todo.items(), judge_placements(jobs, workers)):
        cache.update((placement_key(d), r) for d, r in zip(group, results))
    return {
        sid: [r if r is not None else cache[placement_key(d)] for d, r in zip(firsts[sid], rows)]
        for sid, rows in known.items()
    }


def success_table(
    placements: list[list[dict]], refs: np.ndarray, ks=KS, exclude=EXCLUDE, threshold: float = THRESHOLD
) -> tuple[dict, dict]:
    """Per k: ``[S]`` bool successes and the anomaly rate of the first k placements.

    placements: per system its relaxed placements in order (dicts with ``y_relaxed`` and
    ``anomalies``, as the mapping's ``configs`` and :func:`judge_samples` give them), any lengths
    (a system with fewer than k placements is judged on the ones it has, as with fewer samples).
    """
    width = max(max((len(row) for row in placements), default=0), max(ks))
    e = np.full((len(placements), width), np.nan)
    for i, row in enumerate(placements):
        e[i, : len(row)] = [np.nan if disqualified(c, exclude) else c["y_relaxed"] for c in row]
    wins = {k: successes(e, refs, k, threshold) for k in ks}
    rates = {k: float(np.mean([bool(c["anomalies"]) for row in placements for c in row[:k]] or [np.nan])) for k in ks}
    return wins, rates


def evaluate(
    mapping: dict,
    split: str,
    judged: dict[str, dict[int, list[dict]]] | None = None,
    ks=KS,
    exclude=EXCLUDE,
    resamples: int = 2000,
    seed: int = 0,
    compare=(),
) -> dict:
    """Success@k of the heuristic and random placements of ``split`` and of each judged sample
    set (``{name: judge_samples(...)}``), on the systems with a reference (module docstring);
    every set is compared with ``heuristic``, and set ``a`` with set ``b`` for each ``(a, b)`` of
    ``compare`` (``out["paired"]``), paired over the same resampled systems."""
    refs = references(mapping, split, exclude)
    if not refs:
        raise ValueError(f"dense split {split!r}: no system with a valid reference")
    sids = sorted(refs)
    ref = np.array([refs[s] for s in sids])
    sets = {src: source_configs(mapping, sids, src) for src in ("heuristic", "random")}
    sets.update({name: [per_sid.get(s, []) for s in sids] for name, per_sid in (judged or {}).items()})
    out = {
        "split": split,
        "systems": len(sids),
        "threshold_eV": THRESHOLD,
        "exclude": list(exclude),
        "resamples": resamples,
        "sets": {},
    }
    unknown = sorted({name for pair in compare for name in pair} - set(sets))
    if unknown:
        raise ValueError(f"compare: no placement set {unknown} (the sets: {', '.join(sets)})")
    table = {name: success_table(rows, ref, ks, exclude) for name, rows in sets.items()}
    base = table["heuristic"][0]
    for name, (wins, rates) in table.items():
        rows = {}
        for k in ks:
            boot = paired_bootstrap(wins[k].astype(float), base[k].astype(float), np.mean, resamples, seed)
            rows[f"@{k}"] = {
                "success": float(wins[k].mean()),
                "interval_90": boot["interval_90_a"],
                "anomaly_rate": rates[k],
            }
            if name != "heuristic":
                rows[f"@{k}"].update(vs_heuristic=boot["difference"], vs_heuristic_interval_90=boot["interval_90"])
        out["sets"][name] = {"placements_per_system": max(len(row) for row in sets[name]), **rows}
    out["paired"] = []
    for a, b in compare:
        diffs = {}
        for k in ks:
            boot = paired_bootstrap(
                table[a][0][k].astype(float), table[b][0][k].astype(float), np.mean, resamples, seed
            )
            diffs[f"@{k}"] = {"difference": boot["difference"], "interval_90": boot["interval_90"]}
        out["paired"].append({"a": a, "b": b, **diffs})
    return out


def _differences(row: dict, ks) -> str:
    """``+0.18 (+0.10..+0.26) @1, ...`` of a paired comparison's ``{"@k": {difference, interval_90}}``."""
    return ", ".join(
        f"{row[k]['difference']:+.2f} ({row[k]['interval_90'][0]:+.2f}..{row[k]['interval_90'][1]:+.2f}) {k}"
        for k in ks
    )


def format_result(r: dict) -> str:
    """Text table: one row per placement set, success@k with its 90 % interval, anomaly rate."""
    ks = [k for k in next(iter(r["sets"].values())) if k.startswith("@")]
    lines = [
        (
            f"dense {r['split']}: {r['systems']} systems with a reference; success = within "
            f"{r['threshold_eV']} eV of the minimum over placements not unconverged or {','.join(r['exclude'])} "
            f"(90 % bootstrap intervals, {r['resamples']} resamples)"
        )
    ]
    labels = {name: f"{name} ({s['placements_per_system']}/system)" for name, s in r["sets"].items()}
    width = max(22, *(len(label) + 1 for label in labels.values()))
    lines.append(
        f"{'placements':<{width}}" + "".join(f"{'success' + k:>22}" for k in ks) + f"{'anomalies@' + ks[-1][1:]:>14}"
    )
    for name, s in r["sets"].items():
        cells = "".join(
            f"{s[k]['success']:>8.2f} ({s[k]['interval_90'][0]:.2f}-{s[k]['interval_90'][1]:.2f})" + " " * 3 for k in ks
        )
        lines.append(f"{labels[name]:<{width}}{cells}{s[ks[-1]]['anomaly_rate']:>14.2f}")
    for name, s in r["sets"].items():  # paired over the same resampled systems
        if name != "heuristic":
            vs = {k: {"difference": s[k]["vs_heuristic"], "interval_90": s[k]["vs_heuristic_interval_90"]} for k in ks}
            lines.append(f"{name} minus heuristic, paired: {_differences(vs, ks)}")
    for row in r.get("paired", []):
        lines.append(f"{row['a']} minus {row['b']}, paired: {_differences(row, ks)}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--dense", required=True, help="the dense split folder (DIR/is2re_dense)")
    p.add_argument("--split", default="test_id", help="dense split to score (test_id, val_id, train)")
    p.add_argument(
        "--samples",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="sample LMDB(s) to relax with EMT and score (repeat for several)",
    )
    p.add_argument("--k", default=",".join(map(str, KS)), help="comma list of k")
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="A:B",
        help="also print set A minus set B, paired per system (repeat for several; every set is "
        "compared with heuristic anyway)",
    )
    p.add_argument(
        "--exclude",
        default=",".join(EXCLUDE),
        help=f"anomaly kinds that disqualify a placement (comma list of {','.join(KINDS)}; '' for none)",
    )
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workers", type=int, default=1, help="processes relaxing the samples (results do not depend on it)"
    )
    p.add_argument("--json", help="also write the result (and the judged samples) here")
    args = p.parse_args(argv)
    try:
        ks = tuple(sorted({int(k) for k in args.k.split(",")}))
    except ValueError:
        p.error(f"--k must be a comma list of integers, got {args.k!r}")
    if min(ks) < 1 or args.resamples < 1 or args.workers < 1:
        p.error("--k values, --resamples and --workers must be >= 1")
    exclude = tuple(k for k in args.exclude.split(",") if k)
    if set(exclude) - set(KINDS):
        p.error(f"--exclude: unknown anomaly kind(s) {sorted(set(exclude) - set(KINDS))}; known: {list(KINDS)}")
    sets = {}
    for spec in args.samples:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).exists():
            p.error(f"--samples wants NAME=PATH of an existing LMDB, got {spec!r}")
        sets[name] = path
    compare = [tuple(spec.split(":")) for spec in args.compare]
    if any(len(pair) != 2 or not all(pair) for pair in compare):
        p.error(f"--compare wants A:B (two placement set names), got {args.compare}")
    try:
        mapping = load_mapping(args.dense)
    except FileNotFoundError as err:
        p.error(str(err))
    sids = sorted(references(mapping, args.split, exclude))
    positions, cache = StoredPositions(args.dense, args.split), {}
    judged = {
        name: judge_samples(LmdbDataset(path), mapping, sids, max(ks), args.workers, positions, cache)
        for name, path in sets.items()
    }
    for name, per_sid in judged.items():
        rows = [r for results in per_sid.values() for r in results]
        if any(r.get("stored") for r in rows):
            print(
                f"{name}: {sum(bool(r.get('stored')) for r in rows)} of {len(rows)} placements are the dense "
                "split's own, unmoved: their stored EMT relaxations are used",
                file=sys.stderr,
            )
    try:
        out = evaluate(mapping, args.split, judged, ks, exclude, args.resamples, args.seed, compare)
    except ValueError as err:
        p.error(str(err))
    print(format_result(out))
    if args.json:
        out["judged"] = {name: {str(s): v for s, v in per.items()} for name, per in judged.items()}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
