"""Evaluate an energy/force (S2EF) model on OC20 LMDBs, next to two baselines.

Views of a split (what is predicted against what): ``frames`` of an ``s2ef`` split,
``relaxed`` and ``initial`` of an ``is2re`` one, as :mod:`sfm.data.views` defines them.

Metrics (sfm/eval/oc20.py, as fairchem): energy MAE (eV), force MAE on free atoms (eV/A),
force cosine, EFwT, and the force MAE on the adsorbate's atoms (tag 2; the slab's outnumber them
five to one in the demo world, and their forces are what a placement's relaxation follows);
energy-only views give energy MAE and EwT. Where a view holds several
structures of one system (the frames of a relaxation), also the within-system ranking:
Spearman median over systems and the energy MAE after removing each system's mean.

Baselines, fitted on the training set's energies (the model's training view: ``y`` of s2ef
frames, or both ``y_relaxed`` and ``y_init`` of is2re entries) and predicting zero forces:
``train_mean`` (every structure gets the mean training energy) and ``linear_fit`` (per-element
linear references, least squares ``E ~ sum_i ref[Z_i] + c``; the model's own normaliser
scheme, :class:`~sfm.models.normalizer.EnergyNormalizer`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch_geometric.data import Data
from tqdm import tqdm

from sfm.data import collate
from sfm.data.structure import ADSORBATE_TAG
from sfm.data.views import KINDS, VIEWS, labelled
from sfm.eval.oc20 import force_mae, is2re_metrics, s2ef_metrics, within_system_metrics
from sfm.models.normalizer import EnergyNormalizer

BASELINES = ("train_mean", "linear_fit")


@dataclass
class Predictions:
    """Concatenated over a split: per structure [B], per atom [N, ...]; float64 on the CPU."""

    energy: torch.Tensor  # [B] eV, model
    target_energy: torch.Tensor  # [B] eV
    forces: torch.Tensor | None  # [N, 3] eV/A, model (None when the view has no force label)
    target_forces: torch.Tensor | None
    atomic_numbers: torch.Tensor  # [N] long
    batch: torch.Tensor  # [N] long, structure of each atom
    free: torch.Tensor  # [N] bool
    adsorbate: torch.Tensor  # [N] bool, tag 2 (what a relaxation of a placement moves most)
    system: torch.Tensor  # [B] long, sid of each structure


def predict(
    model,
    items,
    batch_size: int = 16,
    device="cpu",
    progress: bool = True,
    desc: str = "predict",
    total: int | None = None,
) -> Predictions:
    """Run ``model.predict`` over ``items`` (labelled Data) in batches of ``batch_size``."""
    parts = {f.name: [] for f in fields(Predictions)}
    chunk, offset = [], 0
    bar = tqdm(total=total, desc=desc, unit="struct", disable=not progress, mininterval=1.0)

    def flush():
        nonlocal offset
        batch = collate(chunk).to(device)
        out = model.predict(batch)
        parts["energy"].append(out["energy"].double().cpu())
        parts["target_energy"].append(batch.y.reshape(-1).double().cpu())
        if "force" in batch:
            parts["forces"].append(out["forces"].double().cpu())
            parts["target_forces"].append(batch.force.double().cpu())
        parts["atomic_numbers"].append(batch.atomic_numbers.long().cpu())
        parts["batch"].append(batch.batch.cpu() + offset)
        parts["free"].append(~batch.fixed.cpu())
        parts["adsorbate"].append(batch.tags.cpu() == ADSORBATE_TAG)
        sid = getattr(batch, "sid", None)  # without one, each structure is its own system
        parts["system"].append(
            sid.reshape(-1).long().cpu() if sid is not None else torch.arange(batch.num_graphs) + offset
        )
        offset += batch.num_graphs
        bar.update(batch.num_graphs)
        chunk.clear()

    try:
        for item in items:
            chunk.append(item)
            if len(chunk) == batch_size:
                flush()
        if chunk:
            flush()
    finally:
        bar.close()
    if not parts["energy"]:
        raise ValueError("no structures to evaluate")
    if parts["forces"] and len(parts["forces"]) != len(parts["energy"]):
        raise ValueError("some structures have a force label and some do not; evaluate them apart")
    cat = {k: torch.cat(v) if v else None for k, v in parts.items()}
    return Predictions(**cat)


def fit_baselines(items) -> dict[str, EnergyNormalizer]:
    """``{"train_mean", "linear_fit"}`` normalisers fitted on labelled training structures (uses ``y``)."""
    energies_only = [Data(atomic_numbers=d.atomic_numbers, y=d.y) for d in items]
    if not energies_only:
        raise ValueError("no training structures to fit the baselines on")
    out = {}
    for name, refs in (("train_mean", False), ("linear_fit", True)):
        norm = EnergyNormalizer()
        norm.fit(energies_only, fit_references=refs)
        out[name] = norm
    return out


def training_items(dataset, kind: str, max_structures: int = 0, seed: int = 0):
    """Labelled training structures of the model's training view (both views for is2re),
    a seeded subset of at most ``max_structures`` entries (0: all)."""
    import numpy as np

    n = len(dataset)
    idx = (
        range(n)
        if not max_structures or max_structures >= n
        else np.sort(np.random.default_rng(seed).choice(n, max_structures, replace=False))
    )
    for i in idx:
        d = dataset[int(i)]
        if kind == "s2ef":
            yield labelled(d, "frames", f"train[{int(i)}]")
        else:
            yield labelled(d, "relaxed", f"train[{int(i)}]")
            yield labelled(d, "initial", f"train[{int(i)}]")


def view_metrics(pred: Predictions, baselines: dict[str, EnergyNormalizer] | None = None) -> dict:
    """Metrics of the model and of each baseline (zero forces) on one view."""
    num = len(pred.energy)

    several = len(torch.unique(pred.system)) < num  # some system holds several structures

    def metrics(energy, forces):
        if pred.target_forces is None:
            out = is2re_metrics(energy, pred.target_energy)
        else:
            out = s2ef_metrics(energy, pred.target_energy, forces, pred.target_forces, pred.batch, pred.free)
            ads = pred.free & pred.adsorbate
            if ads.any():  # the forces a placement's relaxation follows; a few atoms among many slab atoms
                out["force_mae_adsorbate"] = force_mae(forces, pred.target_forces, ads)
        return {**out, **within_system_metrics(energy, pred.target_energy, pred.system)} if several else out

    out = {
        "structures": num,
        "free_atoms": int(pred.free.sum()),
        "free_adsorbate_atoms": int((pred.free & pred.adsorbate).sum()),
    }
    out["model"] = metrics(pred.energy, pred.forces)
    for name, norm in (baselines or {}).items():
        energy = norm.reference(pred.atomic_numbers, pred.batch, num).double()
        zeros = None if pred.forces is None else torch.zeros_like(pred.target_forces)
        out[name] = metrics(energy, zeros)
    if pred.target_forces is not None and not pred.target_forces[pred.free].any():
        for who in ("model", *(baselines or {})):  # no direction to compare with (relaxed view)
            out[who]["force_cos"] = float("nan")
    return out


def split_name(path) -> str:
    """``data/demo/s2ef/val_id/data.lmdb`` -> ``s2ef/val_id`` (the two folders naming the split)."""
    p = Path(path)
    p = p.parent if p.suffix == ".lmdb" else p
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def split_metrics(
    model,
    dataset,
    kind: str,
    baselines: dict | None = None,
    batch_size: int = 16,
    device="cpu",
    progress: bool = True,
    max_structures: int = 0,
) -> dict:
    """``{view: view_metrics}`` of ``model`` on ``dataset`` (an LmdbDataset) read as ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    n = len(dataset) if not max_structures else min(max_structures, len(dataset))
    out = {}
    for view in VIEWS[kind]:
        items = (labelled(dataset[i], view, f"{dataset.path}[{i}]") for i in range(n))
        pred = predict(model, items, batch_size, device, progress, desc=f"{split_name(dataset.path)} {view}", total=n)
        out[view] = view_metrics(pred, baselines)
    return out


def format_table(report: dict) -> str:
    """Text table of ``{"splits": {name: {view: view_metrics}}}``: one row per split, view and predictor."""
    lines = [
        f"{'split':<18}{'view':<9}{'predictor':<12}{'E MAE eV':>10}{'F MAE eV/A':>12}{'F ads':>8}{'F cos':>8}"
        f"{'EFwT/EwT':>10}{'rho med':>9}{'E-c MAE':>9}{'n':>7}"
    ]
    for split, views in report["splits"].items():
        for view, m in views.items():
            if not isinstance(m, dict) or "model" not in m:
                continue
            for who in ("model", *BASELINES):
                if who not in m:
                    continue
                r = m[who]
                fmae = f"{r['force_mae']:.4f}" if "force_mae" in r else "-"
                fads = f"{r['force_mae_adsorbate']:.4f}" if "force_mae_adsorbate" in r else "-"
                fcos = f"{r['force_cos']:.3f}" if "force_cos" in r else "-"
                within = r.get("efwt", r.get("ewt"))
                rho = f"{r['spearman_median']:.3f}" if "spearman_median" in r else "-"
                centred = f"{r['centred_energy_mae']:.4f}" if "centred_energy_mae" in r else "-"
                lines.append(
                    f"{split:<18}{view:<9}{who:<12}{r['energy_mae']:>10.4f}{fmae:>12}{fads:>8}{fcos:>8}"
                    f"{within:>10.3f}{rho:>9}{centred:>9}{m['structures']:>7}"
                )
    return "\n".join(lines)
