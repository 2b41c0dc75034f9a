"""OC20 LMDB files in and out: ``LmdbDataset`` (read), ``LmdbWriter`` / ``write_lmdb`` (write).

Format (as published by OC20, readable by fairchem and other OC20 tools): one LMDB file
(``subdir=False``) or a folder of ``*.lmdb`` shards. Keys are ASCII integers ``b"0"``,
``b"1"``, ...; values are pickled torch_geometric ``Data``. S2EF shards may also hold a
``b"length"`` key; any key that is not an integer is skipped on read.

Fields (K atoms): ``pos [K,3]`` Cartesian A, ``cell [1,3,3]`` (rows = lattice vectors),
``atomic_numbers [K]``, ``natoms``, ``tags [K]`` (0 subsurface, 1 surface, 2 adsorbate),
``sid``, and where present ``y_init``, ``y_relaxed``, ``pos_relaxed [K,3]`` (IS2RE),
``y``, ``force [K,3]``, ``fixed [K]`` (S2EF). Other stored fields pass through untouched.
"""

from __future__ import annotations

import bisect
import os
import pickle
import struct
from pathlib import Path
from typing import Iterable

import lmdb
import numpy as np
import torch
from torch_geometric.data import Data

from sfm.data.lattice import as_cell, check_lattice
from sfm.data.structure import sid_of

REQUIRED_FIELDS = ("atomic_numbers", "pos", "cell", "natoms", "tags")
_MAP_SIZE = 1 << 40  # virtual address space only; the file grows with what is written
_FLOAT_FIELDS = ("pos", "cell", "pos_relaxed", "force")
_ENERGY_FIELDS = ("y", "y_init", "y_relaxed")


def validate(data: Data, where: str, dictionary=None) -> Data:
    """Check one structure and normalise its dtypes; raise ``ValueError`` naming ``where``.

    ``where`` names the entry in messages (e.g. ``"data.lmdb[12] (sid 4021)"``).
    Checks: required fields present, shapes consistent with ``natoms``, finite positions,
    forces and energy labels, a usable cell (see :func:`sfm.data.lattice.check_lattice`), atomic numbers in 1..118,
    and, if a ``dictionary`` (:class:`sfm.data.dictionary.Dictionary`) is given, every
    element in it (``KeyError`` naming the element and the dictionary file).
    Normalises: ``atomic_numbers``/``tags`` long, ``fixed`` bool, float fields float32,
    ``cell`` reshaped to ``[1,3,3]``, ``natoms`` a Python int.
    """
    keys = set(data.keys())
    missing = [f for f in REQUIRED_FIELDS if f not in keys]
    if missing:
        raise ValueError(f"{where}: missing required field(s) {missing}; has {sorted(keys)}")
    pos = data.pos
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"{where}: pos must be [N, 3], got {list(pos.shape)}")
    n = pos.shape[0]
    if int(data.natoms) != n:
        raise ValueError(f"{where}: natoms={int(data.natoms)} but pos has {n} rows")
    for field in ("atomic_numbers", "tags", "fixed", "pos_relaxed", "force"):
        if field in keys and data[field].shape[0] != n:
            raise ValueError(f"{where}: {field} has {data[field].shape[0]} rows, expected natoms={n}")
    for field in ("pos", "pos_relaxed", "force"):
        if field in keys and not torch.isfinite(data[field]).all():
            bad = (~torch.isfinite(data[field])).any(-1).nonzero().flatten().tolist()
            raise ValueError(f"{where}: {field} has NaN/inf at atom(s) {bad[:10]}")
    for field in _ENERGY_FIELDS:
        if field in keys and not torch.isfinite(torch.as_tensor(data[field], dtype=torch.float64)).all():
            raise ValueError(f"{where}: energy label {field} is {data[field]} (not finite)")
    if data.cell.numel() != 9:
        raise ValueError(f"{where}: cell must hold 3x3 entries, got shape {list(data.cell.shape)}")
    data.cell = as_cell(data.cell)[None]
    check_lattice(data.cell[0], name=f"{where}: cell")
    for field in _FLOAT_FIELDS:
        if field in keys:
            data[field] = data[field].float()
    data.atomic_numbers = data.atomic_numbers.long()
    data.tags = data.tags.long()
    if "fixed" in keys:
        data.fixed = data.fixed.bool()
    data.natoms = n
    z = data.atomic_numbers
    if n and (z.min() < 1 or z.max() > 118):
        raise ValueError(f"{where}: atomic_numbers outside 1..118: {sorted(set(z.tolist()))}")
    if dictionary is not None:
        try:
            dictionary.indices(z)
        except KeyError as err:
            raise KeyError(f"{where}: {err.args[0]}") from None
    return data


def _upgrade_legacy(obj) -> Data:
    """Rebuild a PyG 1.x ``Data`` (unpickles without ``_store``) from its ``__dict__``."""
    if isinstance(obj, Data) and "_store" not in obj.__dict__:
        fields = {k: v for k, v in obj.__dict__.items() if v is not None and not k.startswith("__")}
        return Data(**fields)
    return obj


def _shard_paths(path: Path) -> list[Path]:
    if not path.exists():
        raise FileNotFoundError(f"LMDB path does not exist: {path}")
    if path.is_file():
        return [path]
    shards = sorted(path.glob("*.lmdb"))
    if not shards:
        raise FileNotFoundError(f"no *.lmdb files in folder {path}")
    return shards


def check_lmdb_file(path: Path) -> None:
    """``ValueError`` naming ``path`` if it is empty, not an LMDB file, or shorter than its own
    header says (a copy cut short: LMDB maps the file, and reading past its end kills the
    process with SIGBUS, no message).

    The header is LMDB's two meta pages (lmdb.h, 64-bit little-endian): after a 16-byte page
    header, ``mm_magic`` 0xBEEFC0DE at +0, the page size in the free DB's ``md_pad`` at +24,
    ``mm_last_pg`` at +120 and ``mm_txnid`` at +128; the page of the larger txnid is current,
    and the file needs ``(mm_last_pg + 1) * page_size`` bytes.
    """
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes), not an LMDB")
    with open(path, "rb") as f:
        head = f.read(_META_END)
        magic, page_size = struct.unpack_from("<I20xI", head, 16) if len(head) == _META_END else (None, 0)
        if magic != _LMDB_MAGIC or page_size < _META_END:
            raise ValueError(f"{path}: not an LMDB file (no LMDB header; {size} bytes)")
        f.seek(page_size)
        metas = [head, f.read(_META_END)]
    if len(metas[1]) < _META_END:
        raise ValueError(f"{path}: truncated: {size} bytes, shorter than the LMDB header itself")
    last_page, _ = max((struct.unpack_from("<QQ", m, 136) for m in metas), key=lambda t: t[1])
    needed = (last_page + 1) * page_size
    if size < needed:
        raise ValueError(
            f"{path}: truncated: {size} bytes, but its LMDB header says {needed} (a copy or download cut short?)"
        )


_LMDB_MAGIC = 0xBEEFC0DE
_META_END = 152  # bytes of a meta page up to the end of mm_txnid

_readers: dict[str, lmdb.Environment] = {}  # this process's read-only environments
_readers_pid = None


def _reader(path: str) -> lmdb.Environment:
    """This process's read-only, lock-free environment for the resolved ``path``.

    LMDB forbids opening one file twice in a process and using an environment across
    fork, so environments are shared per process and dropped when the pid changes.
    """
    global _readers_pid
    if _readers_pid != os.getpid():
        _readers.clear()
        _readers_pid = os.getpid()
    env = _readers.get(path)
    if env is None:
        env = lmdb.open(path, subdir=False, readonly=True, lock=False, readahead=False, meminit=False)
        _readers[path] = env
    return env


def _close_reader(path: Path) -> None:
    """Close this process's reader of ``path`` (before writing to or replacing it)."""
    env = _readers.pop(str(path.resolve()), None) if _readers_pid == os.getpid() else None
    if env is not None:
        env.close()


class LmdbDataset(torch.utils.data.Dataset):
    """OC20 structures from one ``.lmdb`` file or a folder of ``*.lmdb`` shards.

    ``dataset[i]`` returns a validated ``Data`` (see :func:`validate`; errors name the
    file, index and sid). Shards are concatenated in file-name order; within a shard
    entries are ordered by their integer key.

    Safe with multi-worker DataLoaders and torchrun: the LMDB environments are opened
    read-only and lock-free, lazily, once per process (re-opened when the pid changes, never
    used across fork); the dataset holds only paths, so it pickles cheaply.
    """

    def __init__(self, path: str | os.PathLike, dictionary=None):
        self.path = Path(path)
        self.dictionary = dictionary
        self.shards = [str(s.resolve()) for s in _shard_paths(self.path)]
        self._keys = []  # per shard: sorted integer keys, np.int64
        for shard in self.shards:
            check_lmdb_file(Path(shard))
            with _reader(shard).begin() as txn:
                keys = [k for k in txn.cursor().iternext(values=False) if k.isdigit()]
            self._keys.append(np.sort(np.array([int(k) for k in keys], dtype=np.int64)))
        self._ends = np.cumsum([len(k) for k in self._keys]).tolist()
        if not self._ends or self._ends[-1] == 0:
            raise ValueError(f"LMDB {self.path} holds no entries (no integer keys)")

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, idx: int) -> Data:
        shard, key = self._locate(idx)
        where = f"{self.shards[shard]}[{key}]"
        with _reader(self.shards[shard]).begin() as txn:
            raw = txn.get(str(key).encode("ascii"))
        try:
            data = _upgrade_legacy(pickle.loads(raw))
        except Exception as err:  # any unpickling failure: re-raised, naming what failed
            raise ValueError(
                f"{where} (entry {idx} of {self.path}): the value is not a readable pickle "
                f"({type(err).__name__}: {err})"
            ) from err
        if not isinstance(data, Data):
            raise TypeError(f"{where} (entry {idx} of {self.path}): holds a {type(data).__name__}, not a PyG Data")
        if "sid" in data:
            where += f" (sid {sid_of(data)})"
        return validate(data, where, self.dictionary)

    def _locate(self, idx: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} out of range for {n} entries in {self.path}")
        idx %= n
        shard = bisect.bisect_right(self._ends, idx)
        start = self._ends[shard - 1] if shard else 0
        return shard, int(self._keys[shard][idx - start])


class LmdbWriter:
    """Write ``Data`` objects to one LMDB file in the OC20 format; a context manager.

    ``append=False`` (default): entries go to ``<path>.tmp-<pid>``, which is renamed onto
    ``path`` only when the ``with`` block ends without error; on error it is deleted and
    ``path`` is untouched, so nothing half-written ever appears at ``path``.

    ``append=True`` (streaming writers): writes into ``path`` itself (created if absent),
    continuing after its last integer key, committing every ``commit_every`` entries and
    at exit (also on error: entries already appended are complete). LMDB commits are
    atomic, so a crash keeps everything committed and the file stays readable.

    Each commit also stores ``b"length"`` (pickled int), as OC20 S2EF shards do.
    """

    def __init__(self, path: str | os.PathLike, append: bool = False, commit_every: int = 1000):
        self.path = Path(path)
        self.append_mode = append
        self.commit_every = commit_every
        self._target = self.path if append else self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        self._env = None
        self._txn = None
        self.count = 0  # entries in the file, committed or pending
        self._pending = 0

    def __enter__(self) -> "LmdbWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.append_mode:
            _close_reader(self._target)
        else:
            self._target.unlink(missing_ok=True)
        self._env = lmdb.open(str(self._target), subdir=False, map_size=_MAP_SIZE, lock=False, meminit=False)
        with self._env.begin() as txn:
            keys = [int(k) for k in txn.cursor().iternext(values=False) if k.isdigit()]
        self.count = max(keys) + 1 if keys else 0
        self._txn = self._env.begin(write=True)
        return self

    def append(self, data: Data) -> None:
        """Add one structure (tensors detached and moved to CPU in a shallow copy)."""
        data = data.__copy__().apply(lambda t: t.detach().cpu())
        self._txn.put(str(self.count).encode("ascii"), pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
        self.count += 1
        self._pending += 1
        if self._pending >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """Make everything appended so far durable."""
        self._txn.put(b"length", pickle.dumps(self.count))
        self._txn.commit()
        self._txn = self._env.begin(write=True)
        self._pending = 0

    def __exit__(self, exc_type, exc, tb) -> None:
        failed = exc_type is not None and not self.append_mode
        if failed:
            self._txn.abort()
        else:
            self.commit()
            self._txn.abort()
            self._env.sync(True)
        self._env.close()
        if failed:
            self._target.unlink(missing_ok=True)
        elif not self.append_mode:
            _close_reader(self.path)
            os.replace(self._target, self.path)


def write_lmdb(path: str | os.PathLike, data_iterable: Iterable[Data], commit_every: int = 1000) -> int:
    """Write structures to a single OC20-format LMDB file at ``path``, atomically.

    Replaces ``path`` if it exists, and only once every entry is written (see
    :class:`LmdbWriter`). Returns the number of entries written.
    """
    with LmdbWriter(path, commit_every=commit_every) as writer:
        for data in data_iterable:
            writer.append(data)
    return writer.count
