import json
import math

import numpy as np
import pytest
import torch

from sfm.data.strict_json import json_safe, write_json


def _strict_load(text):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_become_null_everywhere():
    nested = {
        "a": {"b": float("nan"), "c": 1.5},
        "d": float("inf"),
        "e": [1.0, -math.inf, (np.float64("nan"), 2)],
        3: torch.tensor(float("nan")),
        "f": np.int64(4),
        "g": torch.tensor([2.5]),
    }
    assert json_safe(nested) == {
        "a": {"b": None, "c": 1.5},
        "d": None,
        "e": [1.0, None, [None, 2]],
        "3": None,
        "f": 4,
        "g": 2.5,
    }


def test_write_json_is_strict_json(tmp_path):
    path = write_json(tmp_path / "sub" / "m.json", {"x": float("nan"), "y": [np.float32(0.5)]})
    assert path.read_text().endswith("\n")
    assert _strict_load(path.read_text()) == {"x": None, "y": [0.5]}
    with pytest.raises(TypeError):  # what JSON cannot hold fails loudly, nothing half-written is kept as valid
        write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()
