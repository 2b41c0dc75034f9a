"""Metrics of generated structures (CDVAE, DiffCSP, MatterGen definitions).

One structure is (numbers [n] long Z, pos [n, 3] Cartesian A, cell [3, 3] rows a, b, c),
always periodic in a, b and c (OC20 slabs carry their vacuum inside c).

- validity (CDVAE): every pair of distinct atoms at least 0.5 A apart (minimum image) and
  cell volume above 0.1 A^3;
- composition kept: the sample has the reference's multiset of elements;
- match rate / RMSE (DiffCSP): pymatgen StructureMatcher(stol, ltol, angle_tol) between each
  valid sample and the reference; RMSE is the matcher's RMS displacement, normalised by
  (V / n)^(1/3), averaged over matched systems; match@k takes the best of the first k samples;
- uniqueness: distinct structures (StructureMatcher groups) / samples, within one system;
- lattice statistics: a, b, c (A) and alpha, beta, gamma (degrees) of samples vs data, with
  the 1-D Wasserstein distance between their empirical distributions.
"""

from __future__ import annotations

import numpy as np
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from scipy.stats import wasserstein_distance
from torch import Tensor

from sfm.data.lattice import as_cells, cart_to_frac, minimum_image

# DiffCSP / CDVAE / UniGenX defaults. stol is in units of (V / n)^(1/3): for an OC20 slab with
# ~20 A of vacuum that is ~3 A, loose for an adsorbate; pass a smaller stol to be strict there.
STOL, LTOL, ANGLE_TOL = 0.5, 0.3, 10.0
LATTICE_PARAMS = ("a", "b", "c", "alpha", "beta", "gamma")


def min_distance(pos: Tensor, cell: Tensor) -> float:
    """Smallest minimum-image distance between two distinct atoms (A); inf for one atom."""
    n = pos.shape[0]
    if n < 2:
        return float("inf")
    pos, cell = pos.double(), cell.double()
    i, j = torch.triu_indices(n, n, offset=1)
    dfrac = cart_to_frac(pos[j] - pos[i], cell)
    return minimum_image(dfrac, cell).norm(dim=-1).min().item()


def is_valid(pos: Tensor, cell: Tensor, min_dist: float = 0.5, min_volume: float = 0.1) -> bool:
    """CDVAE structural validity: all atom pairs > min_dist A apart and |det(cell)| > min_volume A^3."""
    if not (torch.isfinite(pos).all() and torch.isfinite(cell).all()):
        return False
    return abs(torch.linalg.det(cell.double()).item()) > min_volume and min_distance(pos, cell) > min_dist


def composition_kept(numbers: Tensor, ref_numbers: Tensor) -> bool:
    """True when both hold the same elements with the same counts (order free)."""
    return torch.equal(torch.sort(numbers.long().cpu()).values, torch.sort(ref_numbers.long().cpu()).values)


def to_structure(numbers: Tensor, pos: Tensor, cell: Tensor) -> Structure:
    """pymatgen Structure, periodic along a, b, c (pbc=True, also for slabs)."""
    return Structure(
        Lattice(cell.double().cpu().numpy(), pbc=(True, True, True)),
        numbers.long().cpu().tolist(),
        pos.double().cpu().numpy(),
        coords_are_cartesian=True,
    )


def structure_matcher(stol: float = STOL, ltol: float = LTOL, angle_tol: float = ANGLE_TOL) -> StructureMatcher:
    """StructureMatcher with the DiffCSP tolerances (site, lattice-length, angle in degrees)."""
    return StructureMatcher(stol=stol, ltol=ltol, angle_tol=angle_tol)


def match_rms(sample: Structure | None, ref: Structure, matcher: StructureMatcher) -> float:
    """Normalised RMS displacement of a match, or nan when no match (or sample is None: invalid)."""
    if sample is None:
        return float("nan")
    rms = matcher.get_rms_dist(sample, ref)
    return float("nan") if rms is None else float(rms[0])


def match_at_k(rms: np.ndarray, k: int) -> dict[str, float]:
    """match@k and RMSE@k from rms [S, K] (nan = no match / missing sample; S systems).

    A system matches when any of its first k samples matched; its RMSE is the best of them.
    match_rate = matched / S; rmse = mean best RMS over matched systems (nan if none).
    """
    rms = np.asarray(rms, dtype=float)[:, :k]
    best = np.where(np.isnan(rms), np.inf, rms).min(axis=1)
    hit = np.isfinite(best)
    return {
        "match_rate": float(hit.mean()) if len(hit) else float("nan"),
        "rmse": float(best[hit].mean()) if hit.any() else float("nan"),
    }


def uniqueness(structures: list[Structure], matcher: StructureMatcher) -> float:
    """Number of distinct structures (StructureMatcher groups) / number of structures."""
    if not structures:
        return float("nan")
    return len(matcher.group_structures(structures)) / len(structures)


def lattice_parameters(cell: Tensor) -> Tensor:
    """[B, 6]: lengths a, b, c (A) and angles alpha (b,c), beta (a,c), gamma (a,b) in degrees."""
    cell = as_cells(cell).double()
    length = cell.norm(dim=-1)

    def angle(u, v):
        cos = (cell[:, u] * cell[:, v]).sum(-1) / (length[:, u] * length[:, v])
        return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))

    return torch.cat([length, torch.stack([angle(1, 2), angle(0, 2), angle(0, 1)], dim=-1)], dim=-1)


def lattice_stats(sample_cells: Tensor, ref_cells: Tensor) -> dict[str, dict[str, float]]:
    """Per lattice parameter: sample mean/std, data mean/std, 1-D Wasserstein distance (A or deg)."""
    s, r = lattice_parameters(sample_cells).numpy(), lattice_parameters(ref_cells).numpy()
    return {
        name: {
            "mean": float(s[:, i].mean()),
            "std": float(s[:, i].std()),
            "ref_mean": float(r[:, i].mean()),
            "ref_std": float(r[:, i].std()),
            "wasserstein": float(wasserstein_distance(s[:, i], r[:, i])),
        }
        for i, name in enumerate(LATTICE_PARAMS)
    }
