"""Where samples go as they are made: one OC20 LMDB and one extended-XYZ file per rank.

Layout of ``save_dir/samples/``::

    rank_00000.lmdb     OC20-format LMDB (LmdbDataset, fairchem): one entry per sample
    rank_00000.extxyz   the same samples, readable by ``ase.io.read(path, ":")``
    rank_00001.lmdb ... (one pair per rank that wrote)

``LmdbDataset(save_dir / "samples")`` reads every rank's samples together. Entries carry
``sid`` (of the input) and ``sample_idx``: a sample is identified by ``(sid,
sample_idx)`` (:func:`sample_key`).

Never losing work: :meth:`SampleStore.write` appends a batch of samples to the LMDB and
commits (an LMDB commit is atomic: a crash, even a kill, keeps every committed batch and
leaves a readable file), then appends the batch to the extxyz and flushes it to disk.
On (re)opening, the extxyz is rewritten from the LMDB, so a crash between the two, or a
half-written extxyz frame, leaves no trace: the LMDB is the record, the extxyz its copy.
:func:`done_keys` lists the samples already in ``samples/`` (any rank's file), which a
resumed run skips.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Data

from sfm.data import LmdbWriter, data_to_atoms
from sfm.data.lmdb_dataset import _reader
from sfm.data.structure import sid_of

SAMPLES_DIR = "samples"
_INFO_FIELDS = ("sid", "sample_idx", "input_index", "mode", "sampler", "steps", "t_start", "nfe", "seed", "formula")


def sample_key(data: Data) -> tuple:
    """``(sid, sample_idx)`` of a sample entry (a tensor sid becomes a Python number)."""
    return sid_of(data), int(data.sample_idx)


def rank_paths(save_dir: str | os.PathLike, rank: int) -> tuple[Path, Path]:
    """``(lmdb, extxyz)`` paths of one rank's output."""
    base = Path(save_dir) / SAMPLES_DIR / f"rank_{rank:05d}"
    return base.with_suffix(".lmdb"), base.with_suffix(".extxyz")


def read_entries(path: Path) -> list[Data]:
    """Every entry of one sample LMDB in key order, through the process's shared read-only
    environment of ``sfm.data`` (LMDB allows one per file and process; ``LmdbWriter`` closes it
    before appending)."""
    with _reader(str(Path(path).resolve())).begin() as txn:
        items = [(int(k), v) for k, v in txn.cursor() if k.isdigit()]
    return [pickle.loads(v) for _, v in sorted(items, key=lambda kv: kv[0])]


def done_keys(save_dir: str | os.PathLike) -> set[tuple]:
    """``(sid, sample_idx)`` of every sample already written under ``save_dir/samples``."""
    folder = Path(save_dir) / SAMPLES_DIR
    return {sample_key(d) for shard in sorted(folder.glob("*.lmdb")) for d in read_entries(shard)}


def to_atoms(data: Data) -> Atoms:
    """ASE ``Atoms`` of a sample entry: periodic, tags, ``FixAtoms`` on ``fixed``, metadata in ``info``."""
    atoms = data_to_atoms(data)
    if "generated" in data:
        atoms.arrays["generated"] = data.generated.numpy().astype(bool)
    for key in _INFO_FIELDS:
        if key in data:
            value = data[key]
            atoms.info[key] = value.item() if torch.is_tensor(value) else value
    return atoms


def _write_xyz(handle, records: list[Data]) -> None:
    if records:
        ase.io.write(handle, [to_atoms(r) for r in records], format="extxyz")
    handle.flush()
    os.fsync(handle.fileno())


class SampleStore:
    """One rank's streaming output (module doc); a context manager.

    ``with SampleStore(save_dir, rank) as store: store.write(records)``; ``store.count`` is
    the number of samples in this rank's LMDB.
    """

    def __init__(self, save_dir: str | os.PathLike, rank: int = 0):
        self.lmdb_path, self.xyz_path = rank_paths(save_dir, rank)
        self._writer = None
        self._xyz = None

    @property
    def count(self) -> int:
        return self._writer.count

    def __enter__(self) -> "SampleStore":
        self.lmdb_path.parent.mkdir(parents=True, exist_ok=True)
        existing = read_entries(self.lmdb_path) if self.lmdb_path.exists() else []
        tmp = self.xyz_path.with_name(self.xyz_path.name + f".tmp-{os.getpid()}")
        with open(tmp, "w") as handle:
            _write_xyz(handle, existing)
        os.replace(tmp, self.xyz_path)
        self._writer = LmdbWriter(self.lmdb_path, append=True, commit_every=np.iinfo(np.int64).max).__enter__()
        self._xyz = open(self.xyz_path, "a")
        return self

    def write(self, records: list[Data]) -> None:
        """Append ``records`` durably: LMDB (committed), then extxyz (flushed)."""
        for record in records:
            self._writer.append(record)
        self._writer.commit()
        _write_xyz(self._xyz, records)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._writer.__exit__(exc_type, exc, tb)
        finally:
            self._xyz.close()
