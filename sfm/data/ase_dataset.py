"""Structures from ASE sources as OC20 ``Data``: ase.db databases and files ase.io reads.

- :class:`AseDbDataset`: ase.db databases, one or several concatenated: SQLite ``.db``,
  ``.json`` and fairchem's ASE-LMDB ``.aselmdb`` (through ``ase-db-backends``, which
  ``ase.db.connect`` loads for the ``aselmdb`` type). ``sid`` defaults to the row id.
- :class:`AseFileDataset`: every frame of files ``ase.io.read`` reads (extxyz, ASE ``.traj``,
  VASP ``OUTCAR`` / ``vasprun.xml``, compressed ``.xz`` / ``.gz`` too), in the given file
  order. ``sid`` defaults to the frame's position in the dataset (files in the order given,
  frames in file order); errors name the file and frame.

Both give what :class:`sfm.data.LmdbDataset` gives: a validated ``Data`` per index (fields
mapped as :mod:`sfm.data.ase_fields` states), optionally with energies referenced
(:class:`sfm.data.energy_reference.EnergyReference`) and fields a task needs checked
(``require``).
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import torch
from torch_geometric.data import Data

from sfm.data.ase_fields import data_from_ase
from sfm.data.lmdb_dataset import validate

DB_TYPES = {".aselmdb": "aselmdb", ".db": "db", ".json": "json"}  # suffix -> ase.db.connect type

_connections: dict[str, object] = {}  # this process's open databases, by resolved path
_connections_pid = None


def db_type(path: Path) -> str:
    """The ``ase.db.connect`` type of a database file, by suffix (a ``.lmdb`` given here is an
    ASE-LMDB: :func:`sfm.data.dataset.open_dataset` tells it from an OC20 LMDB first)."""
    if path.suffix == ".lmdb":
        return "aselmdb"
    if path.suffix not in DB_TYPES:
        raise ValueError(f"{path}: not an ase.db database (suffixes {sorted(DB_TYPES)})")
    return DB_TYPES[path.suffix]


def connect(path: str | os.PathLike):
    """This process's read-only connection to the database at ``path`` (LMDB forbids a second
    environment on one file per process and across fork: one per file, reopened in a new pid)."""
    global _connections_pid
    if _connections_pid != os.getpid():
        for db in _connections.values():
            # An ASE-LMDB inherited over fork still holds its file in py-lmdb's once-per-process
            # registry, and ase-db-backends' own close() would reopen it first: close the raw env.
            env = getattr(db, "_env", None)
            if env is not None:
                env.close()
        _connections.clear()
        _connections_pid = os.getpid()
    key = str(Path(path).resolve())
    db = _connections.get(key)
    if db is None:
        kind = db_type(Path(key))
        kwargs = {"readonly": True} if kind == "aselmdb" else {}
        db = ase.db.connect(key, type=kind, append=True, use_lock_file=False, **kwargs)
        _connections[key] = db
    return db


def disconnect(path: str | os.PathLike) -> None:
    """Close this process's connection to ``path`` (before the file is replaced or written)."""
    db = _connections.pop(str(Path(path).resolve()), None) if _connections_pid == os.getpid() else None
    if db is not None and hasattr(db, "close"):
        db.close()


class _AseDataset(torch.utils.data.Dataset):
    """What both ASE datasets share: the ``Data`` of one structure, referenced and validated.
    ``path``: the file, or the folder of the first file when there are several."""

    def __init__(self, dictionary=None, require: tuple[str, ...] = (), reference=None):
        self.dictionary = dictionary
        self.require = tuple(require)
        self.reference = reference

    def _finish(self, atoms, sid, where: str) -> Data:
        data = data_from_ase(atoms, sid, where, self.require)
        if self.reference is not None:
            data = self.reference(data, where)
        return validate(data, where, self.dictionary)


class AseDbDataset(_AseDataset):
    """Rows of one or more ase.db databases (concatenated in the order given), as OC20 ``Data``.

    A row's ``key_value_pairs`` and ``data`` enter ``atoms.info`` (fairchem's convention), so
    ``sid``, ``y_relaxed``, ``pos_relaxed`` ... stored there become fields. Holds only paths and
    row ids: safe to pickle into DataLoader workers (each process connects on first use).
    """

    def __init__(self, paths, dictionary=None, require: tuple[str, ...] = (), reference=None):
        super().__init__(dictionary, require, reference)
        self.paths = [str(Path(p).resolve()) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        self.path = Path(self.paths[0]) if len(self.paths) == 1 else Path(self.paths[0]).parent
        self._ids = []
        for path in self.paths:
            if not Path(path).is_file():
                raise FileNotFoundError(f"ase.db database does not exist: {path}")
            db = connect(path)
            # ASE-LMDB keeps its id list; the other backends are scanned once.
            ids = db.ids if hasattr(db, "ids") else [row.id for row in db.select(include_data=False)]
            self._ids.append(np.asarray(ids, dtype=np.int64))
        self._ends = np.cumsum([len(ids) for ids in self._ids]).tolist()
        if not self._ends or self._ends[-1] == 0:
            raise ValueError(f"ase.db {', '.join(self.paths)} holds no rows")

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, idx: int) -> Data:
        shard, row_id = self._locate(idx)
        row = connect(self.paths[shard]).get(id=row_id)
        atoms = row.toatoms()
        atoms.info.update(row.key_value_pairs)
        atoms.info.update(row.data)
        return self._finish(atoms, row_id, f"{Path(self.paths[shard]).name} row {row_id}")

    def _locate(self, idx: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} out of range for {n} rows in {', '.join(self.paths)}")
        idx %= n
        shard = bisect.bisect_right(self._ends, idx)
        start = self._ends[shard - 1] if shard else 0
        return shard, int(self._ids[shard][idx - start])


class AseFileDataset(_AseDataset):
    """Every frame of the files ``ase.io.read`` reads, as OC20 ``Data``; frames are read once,
    at construction (convert large sets to an LMDB or ASE-LMDB with ``sfm.data.convert``)."""

    def __init__(self, paths, dictionary=None, require: tuple[str, ...] = (), reference=None):
        super().__init__(dictionary, require, reference)
        self.paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        self.path = self.paths[0] if len(self.paths) == 1 else self.paths[0].parent
        self.frames = []
        self._where = []
        for path in self.paths:
            try:
                images = ase.io.read(path, index=":")
            except Exception as err:
                raise ValueError(f"{path}: ase.io could not read it ({type(err).__name__}: {err})") from err
            self.frames += images
            self._where += [f"{path.name} frame {i}" for i in range(len(images))]
        if not self.frames:
            raise ValueError(f"no structure in {', '.join(map(str, self.paths))}")

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, idx: int) -> Data:
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} out of range for {n} frames in {', '.join(map(str, self.paths))}")
        idx %= n
        return self._finish(self.frames[idx], idx, self._where[idx])
