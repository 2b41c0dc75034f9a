"""Strict JSON for every metrics and report file: nan / inf become ``null``.

Python's ``json`` writes ``NaN`` by default, which strict readers (browsers, ``jq``) reject.
Tensors and numpy scalars become Python numbers; tuples become lists.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch


def json_safe(x):
    """``x`` with every non-finite float replaced by ``None``, recursively (dict keys as str)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic) or (torch.is_tensor(x) and x.numel() == 1):
        x = x.item()
    return None if isinstance(x, float) and not math.isfinite(x) else x


def write_json(path, obj, indent: int = 2) -> Path:
    """Write ``json_safe(obj)`` to ``path`` (parents made), ending with a newline; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n")
    return path
