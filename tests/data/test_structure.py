"""The per-structure conventions of sfm/data/structure.py, one test each."""

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from sfm.data.structure import fixed_mask, parse_tags, plain_sid, sid_of, tag_mask


def test_fixed_mask_stored_else_subsurface_else_none():
    tags = torch.tensor([0, 1, 2, 0])
    stored = Data(pos=torch.zeros(4, 3), tags=tags, fixed=torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert fixed_mask(stored).tolist() == [False, True, False, False]  # the stored field wins over tags
    assert fixed_mask(Data(pos=torch.zeros(4, 3), tags=tags)).tolist() == [True, False, False, True]
    none = fixed_mask(Data(pos=torch.zeros(4, 3)))
    assert none.dtype == torch.bool and not none.any()


@pytest.mark.parametrize(
    "sid, plain", [(torch.tensor([7]), 7), (torch.tensor(7), 7), (np.int64(7), 7), (7, 7), ("Cu4", "Cu4")]
)
def test_sid_is_a_plain_python_value(sid, plain):
    assert plain_sid(sid) == plain and type(plain_sid(sid)) is type(plain)
    assert sid_of(Data(sid=sid)) == plain
    assert {plain_sid(sid): 1}[plain] == 1  # hashable, the same key as the plain value


def test_parse_tags_and_tag_mask():
    assert parse_tags("0,1") == (0, 1) and parse_tags(" 2 ") == (2,) and parse_tags("") == ()
    with pytest.raises(ValueError, match="comma-separated integers, got 'slab'"):
        parse_tags("slab")
    tags = torch.tensor([0, 1, 2, 2, -1, 1])
    for given in [(0, 1), (2,), (), (0, 1, 2)]:
        expected = np.isin(tags.numpy(), list(given))  # numpy's membership, an independent implementation
        assert tag_mask(tags, given).tolist() == expected.tolist()
