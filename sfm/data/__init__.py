"""sfm.data: OC20 LMDB in and out, structure math, PBC graphs, element dictionary, batching."""

from sfm.data.collate import collate
from sfm.data.dictionary import Dictionary
from sfm.data.lmdb_dataset import LmdbDataset, LmdbWriter, validate, write_lmdb

__all__ = ["collate", "Dictionary", "LmdbDataset", "LmdbWriter", "validate", "write_lmdb"]
