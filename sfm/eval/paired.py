"""Are these samples closer to the relaxed structures than a baseline's? A paired test per system.

    python -m sfm.eval.paired --reference SPLIT --samples A/samples --baseline B/samples [--json out.json]
        [--adwt_atoms generated|adsorbate|free|all] [--resamples 2000] [--seed 0]

On 100 systems a difference of ADwT is easily noise. For every system that both sample LMDBs
and the reference hold, each side's first sample (lowest `sample_idx`) is scored by the mean
distance of its scored atoms to `pos_relaxed` (as ADwT, `sfm.eval.gen_metrics`). Reported:
ADwT of both and their difference, with a paired bootstrap over systems (the same systems
resampled for both: a 90 % interval and the fraction of resamples where the difference is
> 0), the fraction of systems where the samples are closer than the baseline, and the median
distances. A missing or mismatched sample counts as infinitely far (a miss).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sfm.data import LmdbDataset, open_dataset
from sfm.data.structure import sid_of
from sfm.eval.gen_metrics import group_samples, sample_distance
from sfm.eval.oc20 import adwt


def first_distances(samples, references, atoms: str = "generated") -> dict:
    """``{sid: distance (A)}`` of each system's first sample (nan: not scorable)."""
    refs = {sid_of(r): r for r in references}
    return {
        sid: sample_distance(group[0], refs[sid], atoms) for sid, group in group_samples(samples).items() if sid in refs
    }


def paired_bootstrap(a: np.ndarray, b: np.ndarray, statistic, resamples: int = 2000, seed: int = 0) -> dict:
    """Paired bootstrap over systems of ``statistic(a) - statistic(b)``.

    a, b: ``[S]`` per-system values of the same systems in the same order; each resample draws
    S systems with replacement and takes both sides from the same systems. Returns the
    difference on all systems, its 90 % interval (5th, 95th percentiles of the resamples), the
    fraction of resamples where it is > 0, and the 90 % interval of each side (``interval_90_a``,
    ``interval_90_b``).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired bootstrap: need two [S] arrays of the same systems, got {a.shape} and {b.shape}")
    picks = np.random.default_rng(seed).integers(0, len(a), (resamples, len(a)))
    sa = np.array([statistic(a[i]) for i in picks])
    sb = np.array([statistic(b[i]) for i in picks])
    diffs = sa - sb
    return {
        "difference": float(statistic(a) - statistic(b)),
        "interval_90": _interval(diffs),
        "p_difference_positive": float((diffs > 0).mean()),
        "interval_90_a": _interval(sa),
        "interval_90_b": _interval(sb),
    }


def _interval(values: np.ndarray) -> list[float]:
    """[5th, 95th] percentiles of bootstrap values."""
    low, high = np.percentile(values, [5, 95])
    return [float(low), float(high)]


def compare(dist: dict, base: dict, resamples: int = 2000, seed: int = 0) -> dict:
    """Paired comparison of two ``{sid: distance}`` maps on their common systems (module doc)."""
    common = sorted(set(dist) & set(base), key=str)
    if not common:
        raise ValueError("the samples and the baseline share no system (sid)")
    a = np.array([dist[s] for s in common], dtype=float)
    b = np.array([base[s] for s in common], dtype=float)
    a, b = np.where(np.isnan(a), np.inf, a), np.where(np.isnan(b), np.inf, b)
    boot = paired_bootstrap(a, b, adwt, resamples, seed)
    return {
        "systems": len(common),
        "adwt": adwt(a),
        "adwt_baseline": adwt(b),
        "difference": boot["difference"],
        "interval_90": boot["interval_90"],
        "p_difference_positive": boot["p_difference_positive"],
        "closer": float((a < b).mean()),
        "median_distance": float(np.median(a)),
        "median_distance_baseline": float(np.median(b)),
        "resamples": resamples,
    }


def format_result(r: dict) -> str:
    low, high = r["interval_90"]
    return (
        f"systems {r['systems']}: ADwT {r['adwt']:.3f} vs baseline {r['adwt_baseline']:.3f}, difference "
        f"{r['difference']:+.3f} (90 % bootstrap interval {low:+.3f} .. {high:+.3f}, P(> 0) "
        f"{r['p_difference_positive']:.2f}); closer than the baseline on {r['closer']:.0%} of systems; "
        f"median distance {r['median_distance']:.2f} vs {r['median_distance_baseline']:.2f} A"
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--reference", required=True, help="LMDB with pos_relaxed (the split the samples were made for)")
    p.add_argument("--samples", required=True, help="sample LMDB(s) to test")
    p.add_argument("--baseline", required=True, help="sample LMDB(s) to compare with (e.g. the initial placements)")
    p.add_argument("--adwt_atoms", choices=("generated", "adsorbate", "free", "all"), default="generated")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    for path in (args.reference, args.samples, args.baseline):
        if not Path(path).exists():
            p.error(f"no such file or folder: {path}")
    if args.resamples < 1:
        p.error(f"--resamples must be >= 1, got {args.resamples}")
    refs = list(open_dataset(args.reference))
    try:
        out = compare(
            first_distances(LmdbDataset(args.samples), refs, args.adwt_atoms),
            first_distances(LmdbDataset(args.baseline), refs, args.adwt_atoms),
            args.resamples,
            args.seed,
        )
    except ValueError as err:
        p.error(str(err))
    print(format_result(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
