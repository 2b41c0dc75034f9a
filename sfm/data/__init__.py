"""sfm.data: datasets (OC20 LMDB, ase.db, ase.io files) in and out, structure math, PBC graphs, element dictionary, batching."""

from sfm.data.atoms import atoms_to_data, batch_to_atoms, data_to_atoms
from sfm.data.collate import collate
from sfm.data.dataset import open_dataset
from sfm.data.dictionary import Dictionary
from sfm.data.lmdb_dataset import LmdbDataset, LmdbWriter, validate, write_lmdb
from sfm.data.strict_json import json_safe, write_json
from sfm.data.structure import fixed_mask, parse_tags, sid_of, tag_mask

__all__ = [
    "atoms_to_data",
    "batch_to_atoms",
    "collate",
    "data_to_atoms",
    "Dictionary",
    "fixed_mask",
    "json_safe",
    "LmdbDataset",
    "LmdbWriter",
    "open_dataset",
    "parse_tags",
    "sid_of",
    "tag_mask",
    "validate",
    "write_json",
    "write_lmdb",
]
