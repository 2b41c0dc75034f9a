"""OC20 task metrics (Chanussot et al., ACS Catal. 11, 6059, 2021), as fairchem computes them.

S2EF   energy MAE, force MAE, force cosine, EFwT      (per structure energy, per atom forces)
IS2RE  energy MAE, EwT                                (relaxed energy)
IS2RS  ADwT                                           (relaxed positions)
AdsorbML placement success@k (Lan et al., npj Comput. Mater. 9, 172, 2023)

Forces and positions count free atoms only (`fixed == False`), as fairchem evaluates them.
Shapes: energies [B] eV; forces, positions [N, 3]; `batch` [N] structure index; `free` [N] bool.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch_geometric.utils import scatter

from sfm.data.lattice import cart_to_frac, minimum_image

ADWT_THRESHOLDS = np.arange(0.01, 0.5, 0.001)  # A, the IS2RS thresholds (490 of them)


def energy_mae(pred: Tensor, target: Tensor) -> float:
    """Mean |E_pred - E_target| over structures (eV)."""
    return (pred - target).abs().mean().item()


def ewt(pred: Tensor, target: Tensor, threshold: float = 0.02) -> float:
    """Energy within threshold: fraction of structures with |E_pred - E_target| < 0.02 eV."""
    return ((pred - target).abs() < threshold).double().mean().item()


def force_mae(pred: Tensor, target: Tensor, free: Tensor | None = None) -> float:
    """Mean absolute error over the x, y, z components of the free atoms' forces (eV/A)."""
    keep = slice(None) if free is None else free
    return (pred[keep] - target[keep]).abs().mean().item()


def force_cos(pred: Tensor, target: Tensor, free: Tensor | None = None) -> float:
    """Mean over free atoms of the cosine between predicted and target force vectors."""
    keep = slice(None) if free is None else free
    return torch.nn.functional.cosine_similarity(pred[keep], target[keep], dim=-1).mean().item()


def efwt(
    pred_e: Tensor,
    target_e: Tensor,
    pred_f: Tensor,
    target_f: Tensor,
    batch: Tensor,
    free: Tensor | None = None,
    e_threshold: float = 0.02,
    f_threshold: float = 0.03,
) -> float:
    """Energy and forces within threshold: fraction of structures with |dE| < 0.02 eV and the
    largest absolute force-component error over the structure's free atoms < 0.03 eV/A."""
    err = (pred_f - target_f).abs().amax(dim=-1)
    if free is not None:
        err = torch.where(free, err, torch.zeros_like(err))
    worst = scatter(err, batch, dim=0, dim_size=pred_e.shape[0], reduce="max")
    ok = ((pred_e - target_e).abs() < e_threshold) & (worst < f_threshold)
    return ok.double().mean().item()


def s2ef_metrics(pred_e, target_e, pred_f, target_f, batch, free=None) -> dict[str, float]:
    """All S2EF metrics in one dict: energy_mae, force_mae, force_cos, efwt."""
    return {
        "energy_mae": energy_mae(pred_e, target_e),
        "force_mae": force_mae(pred_f, target_f, free),
        "force_cos": force_cos(pred_f, target_f, free),
        "efwt": efwt(pred_e, target_e, pred_f, target_f, batch, free),
    }


def within_system_metrics(pred_e: Tensor, target_e: Tensor, system: Tensor) -> dict[str, float]:
    """How well energies rank and space the structures of one system (the frames of one
    relaxation), which is what a judge of placements needs; a per-element fit cannot.

    ``system [B]`` groups the structures. ``spearman_median`` / ``spearman_mean``: Spearman
    correlation of predicted and true energies over each system with >= 3 structures
    (nan for a constant prediction); ``centred_energy_mae`` (eV): MAE after subtracting
    each system's mean from the predicted and from the true energies.
    """
    from scipy.stats import spearmanr

    pred, target, system = (t.detach().double().cpu().numpy() for t in (pred_e, target_e, system))
    rhos, centred = [], np.empty_like(pred)
    for sid in np.unique(system):
        members = system == sid
        p, t = pred[members], target[members]
        centred[members] = (p - p.mean()) - (t - t.mean())
        if members.sum() >= 3:
            rhos.append(spearmanr(p, t).statistic if np.ptp(p) > 0 and np.ptp(t) > 0 else np.nan)
    rhos = np.asarray(rhos, dtype=float)
    return {
        "spearman_median": float(np.median(rhos)) if len(rhos) else float("nan"),
        "spearman_mean": float(np.mean(rhos)) if len(rhos) else float("nan"),
        "centred_energy_mae": float(np.abs(centred).mean()),
    }


def is2re_metrics(pred_e: Tensor, target_e: Tensor) -> dict[str, float]:
    """IS2RE metrics: energy_mae, ewt."""
    return {"energy_mae": energy_mae(pred_e, target_e), "ewt": ewt(pred_e, target_e)}


def mean_distance(pos: Tensor, ref_pos: Tensor, cell: Tensor, batch: Tensor, mask: Tensor | None = None) -> Tensor:
    """[B] mean over the structure's (masked) atoms of the minimum-image distance |pos - ref| (A).

    cell: [B, 3, 3] rows a, b, c (the reference's). A structure with no masked atom gets nan.
    """
    cell = cell.to(pos.dtype)
    dfrac = cart_to_frac(pos - ref_pos, cell[batch])
    dist = minimum_image(dfrac, cell[batch]).norm(dim=-1)
    keep = torch.ones_like(dist, dtype=torch.bool) if mask is None else mask
    B = cell.shape[0]
    total = scatter(torch.where(keep, dist, torch.zeros_like(dist)), batch, dim=0, dim_size=B, reduce="sum")
    count = scatter(keep.to(dist.dtype), batch, dim=0, dim_size=B, reduce="sum")
    return total / count


def adwt(mean_dist: Tensor | np.ndarray) -> float:
    """Average distance within threshold (IS2RS): the mean over delta in [0.01, 0.5) A, step
    0.001, of the fraction of structures whose mean atom distance (`mean_distance`, free
    atoms, minimum image) to the reference relaxed structure is below delta. nan counts as a miss."""
    d = np.asarray(torch.as_tensor(mean_dist).detach().cpu().double())
    d = np.where(np.isnan(d), np.inf, d)
    return float((d[None, :] < ADWT_THRESHOLDS[:, None]).mean())


def successes(energies: np.ndarray, ref: np.ndarray, k: int, threshold: float = 0.1) -> np.ndarray:
    """[S] bool: the lowest relaxed energy among a system's first k samples is at most
    `threshold` eV above its reference (lower counts as success too).

    energies: [S, K] eV, nan for a missing or anomalous sample (never a success); ref: [S] eV.
    """
    e = np.asarray(energies, dtype=float)[:, :k]
    best = np.where(np.isnan(e), np.inf, e).min(axis=1)
    return best - np.asarray(ref, dtype=float) <= threshold


def success_at_k(energies: np.ndarray, ref: np.ndarray, k: int, threshold: float = 0.1) -> float:
    """Fraction of systems that are :func:`successes` at k."""
    return float(successes(energies, ref, k, threshold).mean())
