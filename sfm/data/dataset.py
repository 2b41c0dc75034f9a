"""One dataset interface, chosen by the path: :func:`open_dataset`.

=================================  ==================================================
path                               dataset
=================================  ==================================================
``*.lmdb`` file, OC20 keys         :class:`sfm.data.LmdbDataset` (pickled PyG ``Data``)
``*.lmdb`` file with ``nextid``    :class:`AseDbDataset` (an ASE-LMDB named ``.lmdb``)
``*.aselmdb``, ``*.db``, ``*.json`` :class:`AseDbDataset` (ase.db: ASE-LMDB, SQLite, JSON)
any other file                     :class:`AseFileDataset` if ``ase.io`` recognises it
                                   (extxyz, ``.traj``, ``OUTCAR``, ``vasprun.xml``, ...)
folder                             its ``*.lmdb`` shards; else its ase.db files; else its
                                   ``*.extxyz`` / ``*.xyz`` / ``*.traj`` files (also ``.xz``,
                                   ``.gz``), in name order
a glob (``runs/*.traj``)           the matching files, in name order, read as above
=================================  ==================================================

Every dataset yields validated OC20 ``Data`` (``dataset[i]``, ``len(dataset)``).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from ase.io.formats import UnknownFileTypeError, filetype, ioformats

from sfm.data.ase_dataset import DB_TYPES, AseDbDataset, AseFileDataset
from sfm.data.lmdb_dataset import LmdbDataset, _close_reader, _reader

FRAME_SUFFIXES = (".extxyz", ".xyz", ".traj")  # files a folder is read for
COMPRESSED = ("", ".xz", ".gz", ".bz2")


def is_ase_lmdb(path: Path) -> bool:
    """Whether an LMDB file is an ASE-LMDB (ase-db-backends keeps a ``nextid`` key)."""
    with _reader(str(path.resolve())).begin() as txn:
        found = txn.get(b"nextid") is not None
    if found:  # ase-db-backends opens its own environment: LMDB allows one per file and process
        _close_reader(path)
    return found


def _frame_files(folder: Path) -> list[Path]:
    suffixes = tuple(s + c for s in FRAME_SUFFIXES for c in COMPRESSED)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(suffixes))


def _kind(path: Path) -> str:
    """``"lmdb"``, ``"db"`` or ``"frames"`` for one existing file (module table)."""
    if path.suffix == ".lmdb":
        return "db" if is_ase_lmdb(path) else "lmdb"
    if path.suffix in DB_TYPES:
        return "db"
    try:
        fmt = filetype(str(path))
    except UnknownFileTypeError:
        fmt = None
    if fmt not in ioformats or not ioformats[fmt].can_read:
        raise ValueError(
            f"{path}: unknown format: not an OC20 LMDB (.lmdb), an ase.db database "
            f"({', '.join(DB_TYPES)}) or a file ase.io recognises (extxyz, .traj, OUTCAR, "
            "vasprun.xml, ...)"
        )
    return "frames"


def dataset_files(path: str | os.PathLike) -> tuple[str, list[Path]]:
    """``(kind, files)`` behind ``path`` (module table); errors name the path."""
    text = str(path)
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"no file matches {text}")
    else:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"dataset path does not exist: {path}")
        if path.is_dir():
            files = (
                sorted(path.glob("*.lmdb"))
                or sorted(p for s in DB_TYPES for p in path.glob(f"*{s}"))
                or _frame_files(path)
            )
            if not files:
                raise FileNotFoundError(
                    f"{path}: no *.lmdb, ase.db ({', '.join(DB_TYPES)}) or structure files "
                    f"({', '.join(FRAME_SUFFIXES)}) in this folder"
                )
        else:
            files = [path]
    kinds = {f: _kind(f) for f in files}
    if len(set(kinds.values())) > 1:
        raise ValueError(
            f"{text}: mixes formats ({', '.join(f'{f.name}: {k}' for f, k in kinds.items())}); give one kind of file"
        )
    return kinds[files[0]], files


def open_dataset(path: str | os.PathLike, dictionary=None, require: tuple[str, ...] = (), reference=None):
    """The dataset at ``path`` (file, folder or glob; module table).

    ``dictionary``: elements allowed (:class:`sfm.data.Dictionary`). ``require``: fields the
    task needs (e.g. ``("y", "force")``); an ASE structure without one is an error naming its
    file and row / frame. ``reference``: an :class:`sfm.data.energy_reference.EnergyReference`
    applied to the energies of ASE structures (OC20 LMDB energies are taken as stored).
    """
    kind, files = dataset_files(path)
    if kind == "lmdb":
        if reference is not None:
            raise ValueError(f"{path}: energy references apply to ASE sources; OC20 LMDB energies are used as stored")
        if len(files) > 1 and not Path(path).is_dir():
            raise ValueError(f"{path}: matches {len(files)} OC20 LMDB files; give their folder (read as shards)")
        return LmdbDataset(path if Path(path).is_dir() else files[0], dictionary)
    cls = AseDbDataset if kind == "db" else AseFileDataset
    return cls(files, dictionary, require, reference)
