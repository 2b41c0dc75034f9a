"""Anomalies of a relaxed adsorbate placement, with AdsorbML's definitions.

AdsorbML (Lan et al., npj Comput. Mater. 9, 172 (2023)) discards a relaxed adsorbate+slab
structure that no longer describes "this adsorbate on this surface": its energy is not an
adsorption energy of the system asked for. The rules below are those of fairchem's
``DetectTrajAnomaly`` (``fairchem/data/oc/utils/flag_anomaly.py``, fairchem-data-oc 1.0.2,
the code AdsorbML's evaluation runs), rewritten here for arrays and the minimum image; the
tests check ours against it.

Tags as in OC20: 0 subsurface (fixed), 1 surface, 2 adsorbate; "slab" = tags 0 and 1.

**Bond.** Atoms i, j (Z_i, Z_j) at minimum-image distance d are bonded at multiplier m when

    d < m * (r_i + r_j) + 0.6 A

with r the ASE covalent radii (``ase.data.covalent_radii``, what ``natural_cutoffs(mult=m)``
gives) and 0.6 A the two 0.3 A skins that ASE's ``NeighborList`` adds to every radius by
default (fairchem keeps that default). An atom's bond to its own periodic image is not
counted: it is the same in every structure compared below (same cell), so it never changes
a flag.

**Kinds** (``initial``: the structure before relaxation; ``final``: after; ``slab``: the relaxed
clean slab if there is one, else the slab atoms of ``initial``):

- ``desorbed``: no adsorbate atom is bonded to any slab atom in ``final`` at m = 1.5
  (fairchem's ``desorption_cutoff_multiplier``, a cushion so physisorbed adsorbates stay).
- ``dissociated``: the adsorbate's own bond graph (m = 1) differs between ``initial`` and
  ``final`` (a bond broke or formed).
- ``surface_changed``: the slab's bond graph changed beyond a cushion: a slab-slab bond of
  ``final`` (m = 1) absent from ``slab`` at m = 1.5, or a bond of ``slab`` (m = 1) absent from
  ``final`` at m = 1.5 (``surface_change_cutoff_multiplier``). The reference to the clean slab
  energy is no longer valid then.
- ``intercalated``: an adsorbate atom is bonded (m = 1) to a subsurface atom (tag 0) in
  ``final``: it went into the slab, not onto it.

A structure without adsorbate atoms (a clean slab) can only be ``surface_changed``. All three
cell axes are periodic (OC20: c spans the vacuum).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from ase.data import covalent_radii

from sfm.data.lattice import cart_to_frac, minimum_image
from sfm.data.structure import ADSORBATE_TAG

KINDS = ("desorbed", "dissociated", "surface_changed", "intercalated")
SKIN = 0.3  # A per atom: ASE NeighborList's default skin, which fairchem's rule includes
DESORPTION_MULT = 1.5  # fairchem DetectTrajAnomaly desorption_cutoff_multiplier
SURFACE_CHANGE_MULT = 1.5  # fairchem DetectTrajAnomaly surface_change_cutoff_multiplier


@dataclass(frozen=True)
class Anomalies:
    """The four AdsorbML anomaly flags of one relaxed placement (definitions: module docstring)."""

    desorbed: bool = False
    dissociated: bool = False
    surface_changed: bool = False
    intercalated: bool = False

    @property
    def any(self) -> bool:
        return self.desorbed or self.dissociated or self.surface_changed or self.intercalated

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)

    def labels(self) -> list[str]:
        """Names of the raised flags, in ``KINDS`` order ([] for a valid placement)."""
        return [k for k in KINDS if getattr(self, k)]


def bonds_between(numbers_a, pos_a, numbers_b, pos_b, cell, mult: float = 1.0) -> np.ndarray:
    """``[n_a, n_b]`` bool: atom i of set a bonded to atom j of set b (rule in the module docstring).

    numbers: ``[n]`` Z; pos: ``[n, 3]`` Cartesian A; cell: ``[3, 3]`` rows a, b, c (A).
    """
    cell = torch.as_tensor(np.asarray(cell, dtype=float).reshape(3, 3))
    pa = torch.as_tensor(np.asarray(pos_a, dtype=float).reshape(-1, 3))
    pb = torch.as_tensor(np.asarray(pos_b, dtype=float).reshape(-1, 3))
    radius = covalent_radii * mult + SKIN
    ra = radius[np.asarray(numbers_a, dtype=int).reshape(-1)]
    rb = radius[np.asarray(numbers_b, dtype=int).reshape(-1)]
    if len(ra) == 0 or len(rb) == 0:
        return np.zeros((len(ra), len(rb)), dtype=bool)
    dist = minimum_image(cart_to_frac(pb[None, :] - pa[:, None], cell), cell).norm(dim=-1).numpy()
    return dist < ra[:, None] + rb[None, :]


def bonds(numbers, pos, cell, mult: float = 1.0) -> np.ndarray:
    """``[n, n]`` symmetric bool bond matrix of one structure, no self bonds (module docstring)."""
    out = bonds_between(numbers, pos, numbers, pos, cell, mult)
    np.fill_diagonal(out, False)
    return out


def _as_array(x, name: str, shape: tuple | None = None) -> np.ndarray:
    """``x`` (array-like or tensor) as a float64 numpy array, ValueError naming it if not ``shape``."""
    arr = np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=float)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"anomaly detection: {name} has shape {arr.shape}, expected {shape}")
    return arr


def detect(numbers, tags, initial_pos, final_pos, cell, slab_pos=None) -> Anomalies:
    """AdsorbML anomalies of one relaxation (numpy arrays or torch tensors).

    numbers: ``[n]`` Z; tags: ``[n]`` 0/1/2; initial_pos, final_pos: ``[n, 3]`` A (same atom
    order); cell: ``[3, 3]`` (or ``[1, 3, 3]``) rows a, b, c in A, held during the relaxation;
    slab_pos: ``[n_slab, 3]`` A, the relaxed clean slab, its atoms in the order of the slab
    atoms (tags 0, 1) of the placement; None: the slab atoms of ``initial_pos``.
    """
    numbers = _as_array(numbers, "numbers").reshape(-1).astype(int)
    n = len(numbers)
    tags = _as_array(tags, "tags", (n,)).astype(int)
    bad = sorted(set(tags.tolist()) - {0, 1, 2})
    if bad:
        raise ValueError(f"anomaly detection: tags must be 0 (subsurface), 1 (surface) or 2 (adsorbate), got {bad}")
    initial = _as_array(initial_pos, "initial positions", (n, 3))
    final = _as_array(final_pos, "final positions", (n, 3))
    cell = _as_array(cell, "cell").reshape(3, 3)
    ads, slab, sub = tags == ADSORBATE_TAG, tags != ADSORBATE_TAG, tags == 0
    reference = initial[slab] if slab_pos is None else _as_array(slab_pos, "clean slab positions", (int(slab.sum()), 3))

    z_slab = numbers[slab]
    formed = bonds(z_slab, final[slab], cell) & ~bonds(z_slab, reference, cell, SURFACE_CHANGE_MULT)
    broken = bonds(z_slab, reference, cell) & ~bonds(z_slab, final[slab], cell, SURFACE_CHANGE_MULT)
    surface_changed = bool(formed.any() or broken.any())
    if not ads.any():
        return Anomalies(surface_changed=surface_changed)
    z_ads = numbers[ads]
    return Anomalies(
        desorbed=not bonds_between(z_ads, final[ads], z_slab, final[slab], cell, DESORPTION_MULT).any(),
        dissociated=not np.array_equal(bonds(z_ads, initial[ads], cell), bonds(z_ads, final[ads], cell)),
        surface_changed=surface_changed,
        intercalated=bool(bonds_between(z_ads, final[ads], numbers[sub], final[sub], cell).any()),
    )


def detect_atoms(initial, final, slab=None, tags=None) -> Anomalies:
    """:func:`detect` on ``ase.Atoms``: ``initial`` and ``final`` the same atoms in the same order
    and cell; ``slab`` the relaxed clean slab (optional); ``tags`` default ``initial.get_tags()``."""
    if len(initial) != len(final) or not np.array_equal(initial.numbers, final.numbers):
        raise ValueError("anomaly detection: initial and final structures hold different atoms")
    if not np.allclose(initial.cell.array, final.cell.array, atol=1e-6):
        raise ValueError("anomaly detection: the cell changed during the relaxation; it must be held")
    tags = initial.get_tags() if tags is None else np.asarray(tags)
    if slab is not None and not np.array_equal(slab.numbers, initial.numbers[tags != ADSORBATE_TAG]):
        raise ValueError(
            "anomaly detection: the clean slab's atoms are not the placement's slab atoms (tags 0, 1) in the same order"
        )
    return detect(
        initial.numbers,
        tags,
        initial.positions,
        final.positions,
        initial.cell.array,
        None if slab is None else slab.positions,
    )
