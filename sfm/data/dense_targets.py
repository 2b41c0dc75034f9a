"""Training and sampling sets drawn from a dense split (:mod:`sfm.data.dense`): placements paired
with their system's low-energy relaxed configurations, and one source's placements alone.

    python -m sfm.data.dense_targets low_energy --dense DIR --split train --out OUT/data.lmdb [--best 4] [--within 0.1]
    python -m sfm.data.dense_targets placements --dense DIR --split val_id --out OUT/data.lmdb [--source heuristic]

``low_energy``: the diffusion target toward low energy. A system's *targets* are its relaxed
configurations that are not disqualified (:func:`sfm.data.dense_reference.disqualified`, the default
exclusion) and end within ``within`` eV of its reference (the minimum; 0.1 eV is AdsorbML's
success), the lowest ``best`` of them. Every placement of the system (each heuristic, random
and demo placement, whatever its own relaxation became) gives one IS2RE entry: ``pos`` is the
placement, ``pos_relaxed`` the target nearest to it (mean minimum-image distance of the
adsorbate atoms, tags 2, between the placement and the target's relaxed positions: the
displacement ``train_diff.py --placement_prob`` trains along), ``y_relaxed`` that target's
energy; ``y_init``, ``config_idx`` (the placement's) and the other fields are the dense entry's,
``target_idx`` is the target's ``config_idx``. So the model sees only low-energy configurations
as what to generate, and learns to carry any placement to a nearby one. Systems without a
reference are left out.

``placements``: the placements of one source (``heuristic``, ``random`` or ``demo``), in stored
order, unchanged: the inputs of ``gen.py --t_start T --no_renoise`` that refines them, one
sample each (the sampler numbers the samples of one sid in input order).

Both refuse a dense split whose LMDB and ``mapping.json`` disagree (naming the sid), and
write nothing half-way (:class:`sfm.data.lmdb_dataset.LmdbWriter`).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from sfm.data.dense_reference import EXCLUDE, disqualified, reference
from sfm.data.lattice import as_cell
from sfm.data.lmdb_dataset import LmdbDataset, LmdbWriter
from sfm.data.structure import ADSORBATE_TAG

SOURCES = ("heuristic", "random", "demo")


def systems(dense: str | os.PathLike, split: str) -> Iterator[tuple[int, dict, list]]:
    """``(sid, mapping record, [entry per config])`` of each system of a dense split, in file
    order; FileNotFoundError / ValueError naming the folder, split or sid when the split's LMDB
    and ``mapping.json`` do not describe the same placements."""
    dense = Path(dense)
    mapping_path, lmdb_path = dense / "mapping.json", dense / split / "data.lmdb"
    for path in (mapping_path, lmdb_path):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no dense split here (python -m sfm.data.demo --dense builds one)")
    mapping = json.loads(mapping_path.read_text())
    groups: dict[int, list] = {}
    for entry in LmdbDataset(lmdb_path):
        groups.setdefault(int(entry.sid), []).append(entry)
    for sid, entries in groups.items():
        record = mapping.get(str(sid))
        if record is None:
            raise ValueError(f"{lmdb_path}: sid {sid} has no record in {mapping_path}")
        if record["split"] != split:
            raise ValueError(f"{mapping_path}: sid {sid} is in split {record['split']!r}, its entries in {split!r}")
        indices = [int(e.config_idx) for e in entries]
        if indices != list(range(len(record["configs"]))):
            raise ValueError(
                f"{lmdb_path}: sid {sid} has entries for configs {indices}, its mapping record "
                f"{len(record['configs'])} configs"
            )
        yield sid, record, entries


def targets(record: dict, best: int, within: float, exclude=EXCLUDE) -> list[int]:
    """Indices into ``record["configs"]`` of the system's low-energy configurations, lowest
    energy first: not :func:`sfm.data.dense_reference.disqualified`, ``y_relaxed`` within ``within`` eV of
    the reference (:func:`sfm.data.dense_reference.reference`), at most ``best``; [] without a reference."""
    if best < 1 or within < 0:
        raise ValueError(f"best must be >= 1 and within >= 0 eV, got {best}, {within}")
    ref = reference(record, exclude)
    if ref is None:
        return []
    configs = record["configs"]
    valid = [
        i for i, c in enumerate(configs) if not disqualified(c, exclude) and c["y_relaxed"] <= ref["y_relaxed"] + within
    ]
    return sorted(valid, key=lambda i: configs[i]["y_relaxed"])[:best]


def adsorbate_distance(placement, target) -> float:
    """Mean minimum-image distance (A) of the adsorbate atoms (tags 2) between a placement's
    ``pos`` and a configuration's ``pos_relaxed`` (same atoms, same cell): the fractional
    difference wrapped to [-0.5, 0.5), as the diffusion model's path wraps it."""
    ads = placement.tags == ADSORBATE_TAG
    cell = as_cell(placement.cell).double()
    inverse = torch.linalg.inv(cell)
    dfrac = (target.pos_relaxed[ads].double() - placement.pos[ads].double()) @ inverse
    dfrac = dfrac - torch.round(dfrac)
    return float((dfrac @ cell).norm(dim=-1).mean())


def write_low_energy(
    dense: str | os.PathLike,
    split: str,
    out: str | os.PathLike,
    best: int = 4,
    within: float = 0.1,
    exclude=EXCLUDE,
) -> dict:
    """Write the ``low_energy`` set (module doc) of a dense split to the LMDB ``out``; return
    counts: ``systems``, ``entries``, ``targets_per_system`` (mean), ``systems_without_reference``."""
    count = {"systems": 0, "entries": 0, "targets": 0, "systems_without_reference": 0}
    with LmdbWriter(out) as writer:
        for sid, record, entries in systems(dense, split):
            chosen = targets(record, best, within, exclude)
            if not chosen:
                count["systems_without_reference"] += 1
                continue
            count["systems"] += 1
            count["targets"] += len(chosen)
            for entry in entries:
                nearest = min(chosen, key=lambda i: adsorbate_distance(entry, entries[i]))
                target = entries[nearest]
                data = entry.clone()
                data.pos_relaxed = target.pos_relaxed.clone()
                data.y_relaxed = target.y_relaxed
                data.target_idx = nearest
                writer.append(data)
                count["entries"] += 1
        if count["systems"] == 0:  # raised inside the writer: it discards the file
            raise ValueError(f"{dense}/{split}: no system has a valid reference; nothing written to {out}")
    count["targets_per_system"] = round(count.pop("targets") / count["systems"], 2)
    return count


def write_placements(dense: str | os.PathLike, split: str, out: str | os.PathLike, source: str = "heuristic") -> dict:
    """Write the placements of ``source`` of a dense split to the LMDB ``out`` (module doc);
    return counts ``systems``, ``entries``, ``per_system`` (min, max)."""
    if source not in SOURCES:
        raise ValueError(f"unknown placement source {source!r}; known: {list(SOURCES)}")
    per_system = []
    with LmdbWriter(out) as writer:
        for _, record, entries in systems(dense, split):
            kept = [e for e, c in zip(entries, record["configs"]) if c["source"] == source]
            for entry in kept:
                writer.append(entry)
            per_system.append(len(kept))
        if not sum(per_system):  # raised inside the writer: it discards the file
            raise ValueError(f"{dense}/{split}: no {source} placement; nothing written to {out}")
    return {"systems": len(per_system), "entries": sum(per_system), "per_system": [min(per_system), max(per_system)]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m sfm.data.dense_targets",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (
        ("low_energy", "placements paired with nearby low-energy targets"),
        ("placements", "one source's placements"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("--dense", required=True, help="dense split folder (DIR/is2re_dense or a --dense_out)")
        s.add_argument("--split", required=True, help="train, val_id or test_id")
        s.add_argument("--out", required=True, help="LMDB file to write (e.g. OUT/train/data.lmdb)")
        if name == "low_energy":
            s.add_argument("--best", type=int, default=4, help="targets per system at most")
            s.add_argument("--within", type=float, default=0.1, help="targets end within this many eV of the minimum")
        else:
            s.add_argument("--source", choices=SOURCES, default="heuristic")
    args = p.parse_args(argv)
    try:
        if args.command == "low_energy":
            counts = write_low_energy(args.dense, args.split, args.out, args.best, args.within)
        else:
            counts = write_placements(args.dense, args.split, args.out, args.source)
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))
    print(f"{args.out}: {json.dumps(counts)}")
    return counts


if __name__ == "__main__":
    main()
