import pytest
import torch

from sfm.data import Dictionary, LmdbDataset, write_lmdb
from sfm.data.dictionary import DEFAULT_PATH


def test_default_dictionary():
    d = Dictionary.load()
    assert d.tokens[:2] == ["<pad>", "<mask>"] and len(d) == 2 + 118
    assert d.tokens[d.index(1)] == "H" and d.tokens[d.index(118)] == "Og"
    assert d.index("Cu") == d.index(29) == d.index(torch.tensor(29)) == 30
    assert torch.equal(d.indices(torch.tensor([1.0, 8.0, 78.0])), torch.tensor([2, 9, 79]))


def test_unknown_element_names_element_and_file(tmp_path):
    path = tmp_path / "metals.txt"
    path.write_text("<pad>\nCu\nPt\n\n")
    d = Dictionary.load(path)
    assert len(d) == 3 and d.index("Pt") == 2
    for bad, name in ((8, "'O'"), ("Xx", "'Xx'"), (0, "'Z=0'"), ("<pad>", "'<pad>'")):
        with pytest.raises(KeyError, match=rf"element {name} is not in the dictionary {path}"):
            d.index(bad)
    with pytest.raises(KeyError, match=r"element 'O' is not in the dictionary .*metals\.txt"):
        d.indices(torch.tensor([29, 8]))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        Dictionary.load(tmp_path / "nope.txt")
    assert DEFAULT_PATH.name == "dict.txt"


def test_dataset_checks_elements_against_dictionary(tmp_path, make_structure):
    write_lmdb(tmp_path / "d.lmdb", [make_structure(0)])  # holds H, C, N, O, Cu, Pt
    path = tmp_path / "metals.txt"
    path.write_text("<pad>\nCu\nPt\n")
    with pytest.raises(
        KeyError, match=r"d\.lmdb\[0\] \(sid 0\): element '[HCNO]' is not in the dictionary .*metals\.txt"
    ):
        LmdbDataset(tmp_path / "d.lmdb", dictionary=Dictionary.load(path))[0]
    assert LmdbDataset(tmp_path / "d.lmdb", dictionary=Dictionary.load())[0].natoms == 12
