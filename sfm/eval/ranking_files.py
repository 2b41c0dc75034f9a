"""Sample files in, ranking files out: what :mod:`sfm.eval.ranking` reads and writes.

In: an OC20 LMDB of samples (file or folder of shards, as ``gen_oc20.sh`` writes it) or an
extxyz (``sid`` and ``sample_idx`` in each frame's info), and a reference LMDB by sid.
Out (:func:`write_outputs`): ``scored.lmdb``, ``samples.csv``, ``systems.csv``, ``scores.json``.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from torch_geometric.data import Data

from sfm.data import LmdbDataset, atoms_to_data, open_dataset, write_json, write_lmdb
from sfm.data.dense_reference import reference
from sfm.data.dense_targets import systems as dense_systems
from sfm.data.structure import fixed_mask, plain_sid, sid_of
from sfm.eval.ranking import ANOMALIES, Ranking, sample_indices

EXTXYZ_SUFFIXES = (".xyz", ".extxyz")
CSV_FIELDS = (
    "sid",
    "sample_idx",
    "rank",
    "energy",
    "energy_initial",
    "judge_energy",
    "ref_energy",
    "delta",
    "fmax",
    "converged",
    "relax_steps",
    *ANOMALIES,
    "disqualified",
)


def read_samples(path) -> list[Data]:
    """Samples of an OC20 LMDB (file or folder of shards) or an extxyz file (``.xyz``/``.extxyz``:
    ``sid`` and ``sample_idx`` from each frame's info, tags, FixAtoms -> ``fixed``). A sample
    without ``sample_idx`` gets its order among the samples of its sid. Raises ValueError naming
    the entry if a sample has no sid."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"samples {path}: no such file or directory")
    if path.suffix in EXTXYZ_SUFFIXES:
        import ase.io

        items = []
        for i, atoms in enumerate(ase.io.read(path, ":", format="extxyz")):
            if "sid" not in atoms.info:
                raise ValueError(f"{path} frame {i}: no 'sid' in the frame's info (needed to group samples by system)")
            info = {"sid": plain_sid(atoms.info["sid"])}
            if "sample_idx" in atoms.info:
                info["sample_idx"] = int(atoms.info["sample_idx"])
            items.append(atoms_to_data(atoms, **info))
    elif path.is_dir() or path.suffix == ".lmdb":
        dataset = LmdbDataset(path)
        items = [dataset[i] for i in range(len(dataset))]
    else:
        raise ValueError(
            f"samples {path}: expected an OC20 LMDB (file .lmdb or folder of shards) or an extxyz "
            f"({'/'.join(EXTXYZ_SUFFIXES)})"
        )
    for i, d in enumerate(items):
        if "sid" not in d:
            raise ValueError(f"{path}[{i}]: sample has no 'sid' (the input system it belongs to)")
    for d, idx in zip(items, sample_indices(items)):
        d.sample_idx = idx
        d.fixed = fixed_mask(d)
    return items


def first_samples(samples: list[Data], k: int) -> list[Data]:
    """The samples with the ``k`` lowest ``sample_idx`` of each sid (file order kept)."""
    index = sample_indices(samples)
    by_sid = defaultdict(list)
    for i, d in enumerate(samples):
        by_sid[sid_of(d)].append(index[i])
    keep = {sid: set(sorted(idx)[:k]) for sid, idx in by_sid.items()}
    return [d for i, d in enumerate(samples) if index[i] in keep[sid_of(d)]]


def ranked_samples(ranking: Ranking) -> list[Data]:
    """The scored records (final ``pos``, ``energy``, flags) renumbered best first: ``sample_idx`` is
    the rank within its system (the sample's own index kept as ``source_sample_idx``), so the first
    k of a system are the k a user would hand to a trusted calculator (AdsorbML), and any sample
    reader takes them in that order."""
    out = []
    for rec in ranking.records:
        d = Data(**{k: rec[k] for k in rec.keys()})  # the record's fields (energy, flags, pos_initial)
        d.sample_idx, d.source_sample_idx = int(rec.rank), int(rec.sample_idx)
        out.append(d)
    return out


def read_dense_references(split_dir, exclude) -> dict:
    """``{sid: entry}`` of a dense split folder (``DIR/is2re_dense/SPLIT``, its ``mapping.json`` one
    up): each system's lowest relaxed placement not disqualified by ``exclude``
    (:func:`sfm.data.dense_reference.reference`), AdsorbML's reference; systems without one left out."""
    split_dir = Path(split_dir)
    out = {}
    for sid, record, entries in dense_systems(split_dir.parent, split_dir.name):
        best = reference(record, exclude)
        if best is not None:
            out[sid] = entries[record["configs"].index(best)]
    return out


def read_references(path) -> dict:
    """``{sid: Data}`` of a reference dataset (an IS2RE split; any path :func:`open_dataset` reads)."""
    dataset = open_dataset(path)
    return {sid_of(d): d for d in (dataset[i] for i in range(len(dataset)))}


SYSTEM_FIELDS = (
    "sid",
    "samples",
    "ranked_sample_idx",
    "best_sample_idx",
    "best_energy",
    "best_judge_energy",
    "ref_energy",
    "best_fmax",
    "max_fmax",
    "best_converged",
    "converged",
    "qualified",
)


def write_outputs(ranking: Ranking, out_dir, config: dict | None = None) -> dict[str, Path]:
    """Write ``out_dir/``: ``scored.lmdb`` (OC20 LMDB, one entry per sample in rank order: ``pos``
    final, ``pos_initial``, ``force`` predicted, ``energy``, ``rank``, flags ...), ``samples.csv``
    (one row per sample), ``systems.csv`` (one row per input system) and ``scores.json``
    (summary, config, systems). Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "lmdb": out / "scored.lmdb",
        "samples_csv": out / "samples.csv",
        "systems_csv": out / "systems.csv",
        "json": out / "scores.json",
    }
    write_lmdb(paths["lmdb"], ranking.records)
    with open(paths["samples_csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(ranking.rows)
    ks = sorted({k.split("@")[1] for s in ranking.systems for k in s if k.startswith("success@")}, key=int)
    fields = [*SYSTEM_FIELDS, *ANOMALIES, *(f"success@{k}" for k in ks)]
    with open(paths["systems_csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        for s in ranking.systems:
            writer.writerow({**s, **s["anomalies"], "ranked_sample_idx": " ".join(map(str, s["ranked_sample_idx"]))})
    report = {"summary": ranking.summary, "config": config or {}, "systems": ranking.systems}
    write_json(paths["json"], report)
    return paths


def format_summary(summary: dict) -> str:
    """A few lines for the terminal."""
    s = summary
    lines = [
        f"systems {s['systems']}  samples {s['samples']}  k {s['k']}  judge {s['judge']}",
        f"converged {s['converged_fraction']:.3f}  mean relax steps {s['relax_steps_mean']:.1f}",
        "anomalies "
        + "  ".join(f"{k} {v}" for k, v in s["anomalies"].items())
        + f"  (disqualified {s['disqualified']}: {','.join(s['excluded_kinds']) or 'none'})",
    ]
    succ = [k for k in s if k.startswith("success@")]
    if succ:
        lines.append(
            f"placement success ({s['success_energy']} energy within {s['success_threshold_eV']} eV of "
            f"y_relaxed, {s['systems_with_reference']} systems): "
            + "  ".join(f"{k} {s[k]:.3f}" for k in sorted(succ, key=lambda k: int(k.split("@")[1])))
        )
    if "success_skipped" in s:
        lines.append(f"placement success skipped for {s['success_skipped']}")
    return "\n".join(lines)
