"""Convert between OC20 LMDB, ase.db (ASE-LMDB ``.aselmdb``, SQLite ``.db``, ``.json``) and extxyz.

    python -m sfm.data.convert IN [IN ...] --out OUT [--split NAME=FRACTION,... | NAME=SIDS_FILE,...]

Inputs: anything :func:`sfm.data.open_dataset` reads (files, folders, globs), concatenated in
the order given. The output format is the suffix of ``OUT``: ``.lmdb`` (OC20), ``.aselmdb`` /
``.db`` / ``.json`` (ase.db), ``.extxyz`` / ``.xyz``. Fields map as :mod:`sfm.data.ase_fields`
states; a field with no ASE counterpart (a stored graph such as ``edge_index``) is named and
left out of ASE outputs. extxyz keeps per-atom floats to 8 decimals (ASE's writer), everything
else bit for bit.

``--split``: split ``NAME`` goes to ``OUT.parent / NAME / OUT.name`` (the OC20 layout:
``--out data/mine/data.lmdb --split train=0.9,val_id=0.1`` writes ``data/mine/train/data.lmdb``
and ``data/mine/val_id/data.lmdb``). Fractions split a seeded random permutation of the
entries; a sid file (one sid per line) takes the entries with those sids.

Writes are atomic: every output is written under a temporary name and renamed into place only
when all of them are complete; on any error nothing appears at the outputs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import torch

from sfm.data.ase_dataset import DB_TYPES, disconnect
from sfm.data.ase_fields import ase_from_data
from sfm.data.dataset import open_dataset
from sfm.data.energy_reference import RULES, EnergyReference
from sfm.data.lmdb_dataset import _close_reader, write_lmdb
from sfm.data.structure import sid_of

XYZ_SUFFIXES = (".extxyz", ".xyz")
_ASE_ARRAYS = ("numbers", "positions", "tags")  # kept by ase.db itself


def output_format(path: Path) -> str:
    """``"lmdb"``, ``"db"`` or ``"extxyz"`` from the suffix of an output path."""
    if path.suffix == ".lmdb":
        return "lmdb"
    if path.suffix in DB_TYPES:
        return "db"
    if path.suffix in XYZ_SUFFIXES:
        return "extxyz"
    raise ValueError(
        f"{path}: unknown output format; suffixes: .lmdb, {', '.join(DB_TYPES)}, {', '.join(XYZ_SUFFIXES)}"
    )


def write_dataset(path: Path, items, dropped: set | None = None) -> int:
    """Write ``items`` (``Data``) to ``path`` in the format of its suffix; returns the count.

    Not atomic by itself (see :func:`convert`). Names of fields left out of an ASE output are
    added to ``dropped``.
    """
    kind = output_format(path)
    dropped = set() if dropped is None else dropped
    if kind == "lmdb":
        return write_lmdb(path, items)
    count = 0
    if kind == "extxyz":
        with open(path, "w") as handle:
            for data in items:
                atoms, left_out = ase_from_data(data)
                dropped.update(left_out)
                ase.io.write(handle, atoms, format="extxyz")
                count += 1
        return count
    with ase.db.connect(str(path), type=DB_TYPES[path.suffix], append=False, use_lock_file=False) as db:
        for data in items:
            atoms, left_out = ase_from_data(data)
            dropped.update(left_out)
            # ase.db keeps positions, tags, constraints and calculator results; the rest goes into the
            # row's data, which fairchem's AseDBDataset (and sfm) read back into atoms.info
            extra = {**atoms.info, **{k: v for k, v in atoms.arrays.items() if k not in _ASE_ARRAYS}}
            db.write(atoms, data=extra)
            count += 1
    return count


def split_indices(dataset, spec: str | None, seed: int = 0) -> dict[str | None, list[int]]:
    """``{split name: entry indices}`` for ``--split`` (module doc); ``{None: all}`` without one."""
    n = len(dataset)
    if not spec:
        return {None: list(range(n))}
    parts = [p.split("=", 1) for p in spec.split(",")]
    if any(len(p) != 2 or not p[0] for p in parts):
        raise ValueError(f"--split {spec!r}: expected NAME=FRACTION,... or NAME=SIDS_FILE,...")
    names = [name for name, _ in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"--split {spec!r}: a split name appears twice")
    if all(Path(v).is_file() for _, v in parts):
        return _split_by_sids(dataset, parts)
    try:
        fractions = [float(v) for _, v in parts]
    except ValueError:
        raise ValueError(f"--split {spec!r}: each value must be a fraction, or each a file of sids") from None
    if any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"--split {spec!r}: fractions must be > 0 and sum to at most 1")
    order = np.random.default_rng(seed).permutation(n).tolist()
    ends = np.round(np.cumsum(fractions) * n).astype(int).tolist()
    starts = [0, *ends[:-1]]
    return {name: sorted(order[a:b]) for name, a, b in zip(names, starts, ends)}


def _split_by_sids(dataset, parts) -> dict[str, list[int]]:
    wanted = {}
    for name, file in parts:
        for line in Path(file).read_text().splitlines():
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            sid = int(text) if text.lstrip("-").isdigit() else text
            if sid in wanted:
                raise ValueError(f"sid {sid} is in both {wanted[sid]} and {name} ({file})")
            wanted[sid] = name
    out = {name: [] for name, _ in parts}
    found = set()
    for i in range(len(dataset)):
        sid = sid_of(dataset[i])
        if sid in wanted:
            out[wanted[sid]].append(i)
            found.add(sid)
    missing = [s for s in wanted if s not in found]
    if missing:
        raise ValueError(f"{len(missing)} sid(s) of the split files are not in the input, e.g. {missing[:5]}")
    return out


def convert(inputs: list[str], out: Path, split: str | None = None, seed: int = 0, reference=None) -> dict:
    """Convert ``inputs`` to ``out`` (module doc); returns ``{output path: count}`` and the
    fields left out under ``"dropped"``."""
    output_format(out)
    datasets = [open_dataset(p, reference=reference) for p in inputs]
    dataset = torch.utils.data.ConcatDataset(datasets)
    groups = split_indices(dataset, split, seed)
    empty = [name for name, indices in groups.items() if not indices]
    if empty:
        raise ValueError(f"split(s) {empty} would be empty ({len(dataset)} entries in the input)")
    targets = {name: out if name is None else out.parent / name / out.name for name in groups}
    temps = {name: t.with_name(f"{t.stem}.tmp-{os.getpid()}{t.suffix}") for name, t in targets.items()}
    counts, dropped = {}, set()
    try:
        for name, indices in groups.items():
            temps[name].parent.mkdir(parents=True, exist_ok=True)
            counts[str(targets[name])] = write_dataset(temps[name], (dataset[i] for i in indices), dropped)
    except BaseException:
        for temp in temps.values():
            _remove(temp)
        raise
    for name, target in targets.items():
        disconnect(target)  # this process's readers of a file being replaced
        _close_reader(target)
        os.replace(temps[name], target)
        _remove(temps[name])  # the lock file an LMDB writer leaves beside it
    return {"outputs": counts, "dropped": sorted(dropped)}


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-lock")):
        p.unlink(missing_ok=True)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="datasets: OC20 LMDB, ase.db, extxyz / traj / OUTCAR ..., folders, globs")
    p.add_argument("--out", required=True, type=Path, help="output file; its suffix picks the format")
    p.add_argument("--split", help="NAME=FRACTION,... or NAME=SIDS_FILE,... (outputs OUT.parent/NAME/OUT.name)")
    p.add_argument("--seed", type=int, default=0, help="permutation seed of fraction splits")
    p.add_argument("--references", type=Path, help='JSON {"element": eV}: reference the energies of ASE inputs')
    p.add_argument(
        "--reference_atoms",
        choices=RULES,
        default="all",
        help="all: per-element linear references; adsorbate: gas references on tags 2 minus slab_energy",
    )
    args = p.parse_args(argv)
    reference = EnergyReference.load(args.references, args.reference_atoms) if args.references else None
    try:
        result = convert(args.inputs, args.out, args.split, args.seed, reference)
    except (ValueError, KeyError, FileNotFoundError) as err:
        p.error(str(err))
    for path, count in result["outputs"].items():
        print(f"wrote {count} structures to {path}")
    if result["dropped"]:
        print(f"left out (no counterpart in {args.out.suffix}): {', '.join(result['dropped'])}")
    return result


if __name__ == "__main__":
    main()
