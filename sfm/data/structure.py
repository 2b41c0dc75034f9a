"""The per-structure conventions of an OC20 entry, each defined once.

- fixed atoms: the stored ``fixed`` ``[N]`` when present, else ``tags == 0`` (the
  subsurface), else none (no tags: unknown, see :func:`fixed_mask`);
- ``tags`` ``[N]`` long: 0 subsurface, 1 surface, 2 adsorbate, -1 unknown;
- a system id (``sid``) is a plain Python value (an int for OC20; a one-element tensor or
  numpy scalar becomes its number, see :func:`sid_of`);
- the atoms given to a generator are those whose tag is in ``given_tags`` (:func:`tag_mask`),
  a tuple of ints parsed once from its flag text (:func:`parse_tags`), by default the slab
  (``SLAB_TAGS``).
"""

from __future__ import annotations

import numpy as np
import torch

UNKNOWN_TAG = -1
ADSORBATE_TAG = 2
SLAB_TAGS = (0, 1)  # subsurface and surface: the atoms an inpainting is given by default


def fixed_mask(data) -> torch.Tensor:
    """``[N]`` bool: ``data.fixed`` if stored, else ``data.tags == 0``, else nothing fixed."""
    if getattr(data, "fixed", None) is not None:
        return data.fixed.bool().reshape(-1)
    if getattr(data, "tags", None) is not None:
        return data.tags.reshape(-1) == 0
    return torch.zeros(data.pos.shape[0], dtype=torch.bool, device=data.pos.device)


def plain_sid(sid):
    """A system id as a plain Python value: a one-element tensor or a numpy scalar becomes its
    number; anything else (an int, a formula string) is returned as it is."""
    if torch.is_tensor(sid) and sid.numel() == 1:
        return sid.item()
    if isinstance(sid, np.generic):
        return sid.item()
    return sid


def sid_of(data):
    """The plain system id (:func:`plain_sid`) of an entry with a ``sid`` field."""
    return plain_sid(data.sid)


def name_structures(data, graphs: torch.Tensor) -> str:
    """``"sid 4, sid 9"``: the structures ``graphs`` (indices into a Batch, or [0] for a Data) by
    sid, or by index where there is none (for messages)."""
    sid = getattr(data, "sid", None)
    sids = sid.reshape(-1).tolist() if torch.is_tensor(sid) else sid if isinstance(sid, list) else [sid]
    return ", ".join(
        f"sid {plain_sid(sids[g])}" if sid is not None and g < len(sids) else f"structure {g}" for g in graphs.tolist()
    )


def parse_tags(text: str) -> tuple[int, ...]:
    """``"0,1"`` -> ``(0, 1)``; ValueError naming the text if an item is not an integer."""
    try:
        return tuple(int(t) for t in str(text).split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--given_tags must be comma-separated integers, got {text!r}") from None


def tag_mask(tags: torch.Tensor, given_tags) -> torch.Tensor:
    """``[N]`` bool: atoms whose tag is one of ``given_tags`` (the atoms given in inpainting)."""
    return torch.isin(tags, torch.as_tensor(list(given_tags), dtype=tags.dtype, device=tags.device))
