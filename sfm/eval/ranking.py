"""Relax-and-rank generated samples with an energy/force model: relax, judge, flag, rank, success@k.

    rank_samples(model, samples, RankingConfig(...), references=None, judge=None) -> Ranking

Samples are OC20-style ``Data`` (:mod:`sfm.eval.ranking_files` reads them), each with ``sid``
(of the input system) and ``sample_idx`` (else its order among the samples of its sid). Per sample:

1. the model relaxes it (:func:`sfm.relax.relax_structures`: batched FIRE or L-BFGS, fixed atoms
   held, the cell held; ``steps=0`` only predicts): ``energy`` (eV, model, at the final
   positions), ``energy_initial`` (model, at the input), ``fmax`` (eV/A, free atoms),
   ``converged`` (fmax < the target), ``relax_steps``;
2. optionally a judge re-evaluates the model-relaxed structure (AdsorbML's ML+SP / ML+RX):
   ``judge_energy`` on the references' scale, ``pos_judge`` when the judge relaxes (a judge is
   any object of the protocol in :mod:`sfm.relax.emt_judge`; the demo world's is ``EMTJudge``);
3. anomalies (structures with adsorbate atoms, tag 2), AdsorbML's, as :mod:`sfm.data.anomaly`
   defines them, of the final structure (the judge's when it relaxes): ``desorbed``,
   ``dissociated`` (against the reference's adsorbate at ``pos``, or the sample's input when
   there is no reference with the same atoms), ``surface_changed`` (against the sample's input
   slab), ``intercalated``.

Ranking: within a system, samples not disqualified (``cfg.exclude`` lists the anomaly kinds
that disqualify) come first, each group by model energy, lowest first: ``rank`` 0 is what a
user would keep. Success@k (AdsorbML): take a system's k best-ranked qualified samples;
success if the lowest *judged* energy among them (the model energy without a judge) is at
most ``threshold`` (0.1 eV) above the reference ``y_relaxed``.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch_geometric.data import Data

from sfm.data.anomaly import KINDS, detect
from sfm.data.lattice import as_cell
from sfm.data.structure import ADSORBATE_TAG, fixed_mask, sid_of
from sfm.eval.oc20 import success_at_k
from sfm.relax.relax_batch import OPTIMIZERS
from sfm.relax.relax_structures import RelaxSettings, relax_structures

ANOMALIES = KINDS
RECORD_FIELDS = ("energy", "energy_initial", "fmax", "converged", "relax_steps", "rank", *ANOMALIES, "disqualified")


@dataclass
class RankingConfig:
    """Plain values of a relax-and-rank run; the flags of ``sfm/tasks/score.py`` have these names."""

    optimizer: str = "fire"
    fmax: float = 0.05  # eV/A, convergence on free atoms
    steps: int = 300  # optimiser step cap; 0: predict only, no relaxation
    batch_size: int = 32  # structures relaxed together
    max_atoms: int | None = None  # atoms per model call (relax_batch), None: the whole batch
    exclude: tuple[str, ...] = ANOMALIES  # anomaly kinds that disqualify a sample
    threshold: float = 0.1  # eV, success@k
    ks: tuple[int, ...] = (1,)  # success@k reported for these k and for the largest sample count
    device: str = "cpu"
    progress: bool = True

    def relax_settings(self) -> RelaxSettings:
        return RelaxSettings(
            self.optimizer, self.fmax, self.steps, self.batch_size, self.max_atoms, self.device, self.progress
        )


@dataclass
class Ranking:
    """Result of :func:`rank_samples`: ``records`` (one Data per sample, ranked within each sid,
    systems in order of first appearance), ``rows`` (CSV rows, same order), ``systems``
    (per-system dicts) and ``summary``."""

    records: list[Data]
    rows: list[dict]
    systems: list[dict]
    summary: dict = field(default_factory=dict)


def check_config(cfg: RankingConfig) -> None:
    """ValueError naming the first bad setting."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be 'fire' or 'lbfgs', got {cfg.optimizer!r}")
    bad = set(cfg.exclude) - set(ANOMALIES)
    if bad:
        raise ValueError(f"exclude: unknown anomaly kind(s) {sorted(bad)}; known: {list(ANOMALIES)}")
    if cfg.steps < 0 or cfg.batch_size < 1 or not cfg.fmax > 0 or any(k < 1 for k in cfg.ks):
        raise ValueError("steps must be >= 0, batch_size >= 1, fmax > 0 and every k >= 1")


def sample_indices(samples) -> list[int]:
    """Each sample's ``sample_idx``, or, where it has none, its order among its sid's samples."""
    seen, out = defaultdict(int), []
    for d in samples:
        out.append(int(d.sample_idx) if "sample_idx" in d else seen[sid_of(d)])
        seen[sid_of(d)] += 1
    return out


def rank_samples(model, samples: list[Data], cfg: RankingConfig, references: dict | None = None, judge=None) -> Ranking:
    """Relax, judge (if a ``judge`` is given), flag and rank ``samples`` (module docstring);
    ``references``: ``{sid: Data}`` or None."""
    check_config(cfg)
    if not samples:
        raise ValueError("no samples to rank")
    references = references or {}
    index = sample_indices(samples)
    samples = [_with(d, fixed=fixed_mask(d)) for d in samples]
    if judge is not None:
        judge.check(samples)
    relaxed = relax_structures(
        model, samples, cfg.relax_settings(), "relax (model)" if cfg.steps else "predict (model)"
    )
    judged = [None] * len(samples)
    if judge is not None:
        judged, judge_pos = judge(samples, [r["pos"] for r in relaxed], references)
        for r, pos in zip(relaxed, judge_pos or []):
            r["judge_pos"] = pos
    groups = defaultdict(list)
    for i, d in enumerate(samples):
        groups[sid_of(d)].append(i)
    out = Ranking([], [], [])
    for sid, members in groups.items():
        ranked = _rank_system(sid, members, samples, index, relaxed, judged, references.get(sid), cfg)
        out.records += ranked.records
        out.rows += ranked.rows
        out.systems += ranked.systems
    out.summary = summarize(out.rows, out.systems, cfg, judge.name if judge is not None else "none")
    without = out.summary["systems"] - out.summary["systems_with_reference"]
    if without:  # said, not left to a missing line: a test split as reference has no y_relaxed
        why = "their reference entry has no y_relaxed (a test split?)" if references else "no reference given"
        out.summary["success_skipped"] = f"{without} of {out.summary['systems']} systems: {why}"
    return out


def _rank_system(sid, members, samples, index, relaxed, judged, ref, cfg: RankingConfig) -> Ranking:
    """Rows, records and the system dict of one system's samples (``members``: their positions)."""
    ref_energy = float(ref.y_relaxed) if ref is not None and "y_relaxed" in ref else math.nan
    flags = {}
    for i in members:
        flags[i] = anomaly_flags(samples[i], relaxed[i].get("judge_pos", relaxed[i]["pos"]), ref)
        flags[i]["disqualified"] = any(flags[i][k] for k in cfg.exclude)
    order = sorted(members, key=lambda i: (flags[i]["disqualified"], relaxed[i]["energy"], index[i]))
    out = Ranking([], [], [])
    for rank, i in enumerate(order):
        r = relaxed[i]
        row = {
            "sid": sid,
            "sample_idx": index[i],
            "rank": rank,
            "energy": r["energy"],
            "energy_initial": r["energy_initial"],
            "judge_energy": math.nan if judged[i] is None else judged[i],
            "ref_energy": ref_energy,
            "fmax": r["fmax"],
            "converged": r["converged"],
            "relax_steps": r["relax_steps"],
            **flags[i],
        }
        row["delta"] = (row["energy"] if judged[i] is None else row["judge_energy"]) - ref_energy
        out.rows.append(row)
        out.records.append(_record(samples[i], r, row, index[i], judged[i] is not None))
    best = out.rows[0]
    out.systems.append(
        {
            "sid": sid,
            "samples": len(order),
            "ranked_sample_idx": [index[i] for i in order],
            "best_sample_idx": best["sample_idx"],
            "best_energy": best["energy"],
            "best_judge_energy": best["judge_energy"],
            "ref_energy": ref_energy,
            "best_fmax": best["fmax"],
            "max_fmax": max(relaxed[i]["fmax"] for i in members),
            "best_converged": best["converged"],
            "converged": sum(relaxed[i]["converged"] for i in members),
            "qualified": sum(not flags[i]["disqualified"] for i in members),
            "anomalies": {k: sum(flags[i][k] for i in members) for k in ANOMALIES},
        }
    )
    return out


def _record(d: Data, relaxed: dict, row: dict, sample_idx: int, judged: bool) -> Data:
    """The ranked sample as it is stored: its fields, final ``pos``, ``pos_initial``, predicted
    ``force`` and the row's values (``judge_energy`` and ``pos_judge`` when judged)."""
    rec = Data(**{k: d[k] for k in d.keys()})
    rec.pos_initial, rec.pos, rec.force, rec.sample_idx = d.pos, relaxed["pos"], relaxed["force"], sample_idx
    for key in RECORD_FIELDS:
        rec[key] = row[key]
    if judged:
        rec.judge_energy = row["judge_energy"]
        if "judge_pos" in relaxed:
            rec.pos_judge = relaxed["judge_pos"]
    return rec


def anomaly_flags(sample: Data, final_pos: torch.Tensor, ref: Data | None) -> dict[str, bool]:
    """The AdsorbML anomaly flags (``ANOMALIES``) of one relaxed sample (module docstring); all
    False for a structure without adsorbate atoms (nothing was placed)."""
    tags, numbers = sample.tags, sample.atomic_numbers
    if not (tags == ADSORBATE_TAG).any():
        return dict.fromkeys(ANOMALIES, False)
    same = ref is not None and torch.equal(ref.atomic_numbers.long(), numbers.long()) and torch.equal(ref.tags, tags)
    before = ref.pos if same else sample.pos
    return detect(
        numbers, tags, before, final_pos, as_cell(sample.cell), slab_pos=sample.pos[tags != ADSORBATE_TAG]
    ).as_dict()


def _with(d: Data, **fields) -> Data:
    """A shallow copy of ``d`` with ``fields`` set (the caller's Data is left alone)."""
    out = copy.copy(d)
    for k, v in fields.items():
        out[k] = v
    return out


def energy_matrix(rows: list[dict], systems: list[dict], judged: bool) -> np.ndarray:
    """[S, K] energies of each system's samples in rank order (judged or model), nan for a
    disqualified or missing sample."""
    K = max(s["samples"] for s in systems)
    out = np.full((len(systems), K), np.nan)
    index = {s["sid"]: n for n, s in enumerate(systems)}
    for r in rows:
        if not r["disqualified"]:
            out[index[r["sid"]], r["rank"]] = r["judge_energy"] if judged else r["energy"]
    return out


def summarize(rows: list[dict], systems: list[dict], cfg: RankingConfig, judge: str = "none") -> dict:
    """Counts, convergence, anomalies and (with references) success@k over all systems; each
    system's dict also gets its own ``success@k`` flags. ``judge``: the judge's name or "none"."""
    K = max(s["samples"] for s in systems)
    out = {
        "systems": len(systems),
        "samples": len(rows),
        "k": K,
        "judge": judge,
        "converged_fraction": float(np.mean([r["converged"] for r in rows])),
        "relax_steps_mean": float(np.mean([r["relax_steps"] for r in rows])),
        "anomalies": {k: int(sum(r[k] for r in rows)) for k in ANOMALIES},
        "disqualified": int(sum(r["disqualified"] for r in rows)),
        "excluded_kinds": list(cfg.exclude),
    }
    with_ref = [n for n, s in enumerate(systems) if math.isfinite(s["ref_energy"])]
    out["systems_with_reference"] = len(with_ref)
    if with_ref:
        energies = energy_matrix(rows, systems, judge != "none")[with_ref]
        ref = np.array([systems[n]["ref_energy"] for n in with_ref])
        for k in sorted({k for k in cfg.ks if k <= K} | {K}):  # k beyond the sample count would repeat @K
            out[f"success@{k}"] = success_at_k(energies, ref, k, cfg.threshold)
            for row, n in enumerate(with_ref):
                systems[n][f"success@{k}"] = bool(
                    success_at_k(energies[row : row + 1], ref[row : row + 1], k, cfg.threshold)
                )
        out["success_threshold_eV"] = cfg.threshold
        out["success_energy"] = "judge" if judge != "none" else "model"
    return out
