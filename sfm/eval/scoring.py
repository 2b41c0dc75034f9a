"""Score generated samples with an energy/force model: predict, relax, judge, rank, success@k.

    score(model, samples, ScoreConfig(...), references=None) -> Scored

Samples are OC20-style ``Data`` (``read_samples``: a sample LMDB as ``gen_oc20.sh`` writes
it, or an extxyz), each with ``sid`` (of the input system) and ``sample_idx`` (else its
order among the samples of its sid). Per sample:

1. the model relaxes it (batched FIRE or L-BFGS, ``sfm.relax.relax_batch``; fixed atoms held,
   the cell held; ``steps=0`` only predicts): ``energy`` (eV, model, at the final
   positions), ``energy_initial`` (model, at the input), ``fmax`` (eV/A, free atoms),
   ``converged`` (fmax < the target), ``relax_steps``;
2. optionally a judge re-evaluates the model-relaxed structure: ``emt`` (an ASE EMT single
   point, AdsorbML's "ML+SP") or ``emt_relax`` (an EMT relaxation from there, "ML+RX").
   Judged energies are put on the reference's scale, the demo world's adsorption energy
   ``E - E_slab - E_gas`` (sfm/data/demo.py): the offset ``E_slab + E_gas`` of a system is
   ``E_EMT(pos_relaxed) - y_relaxed`` of its reference entry, or, without one, the demo
   world's recipe (EMT-relaxed clean slab from the sample's slab atoms at their input
   positions, plus the per-element gas references);
3. anomalies (sfm/eval/placement.py, structures with adsorbate atoms, tag 2): ``desorbed``
   (final structure), ``dissociated`` (adsorbate bond graph of the final structure vs the
   reference's ``pos``, or the sample's input when there is no reference with the same
   atoms), ``slab_moved`` (a slab atom moved more than ``slab_threshold`` A from the input).

Ranking: within a system, samples not disqualified (``cfg.exclude`` lists the anomaly kinds
that disqualify) come first, each group by model energy, lowest first: ``rank`` 0 is what a
user would keep. Success@k (AdsorbML): take a system's k best-ranked qualified samples;
success if the lowest *judged* energy among them (the model energy without a judge) is at
most ``threshold`` (0.1 eV) above the reference ``y_relaxed``.
"""

from __future__ import annotations

import copy
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data
from tqdm import tqdm

from sfm.data import LmdbDataset, collate, data_to_atoms
from sfm.data.lattice import as_cell
from sfm.data.structure import fixed_mask, plain_sid, sid_of
from sfm.eval.placement import adsorbate_desorbed, adsorbate_dissociated, slab_max_displacement, success_at_k
from sfm.relax import EMTFn, atoms_to_data, relax_batch

JUDGES = ("none", "emt", "emt_relax")
ANOMALIES = ("desorbed", "dissociated", "slab_moved")
EXTXYZ_SUFFIXES = (".xyz", ".extxyz")
CSV_FIELDS = ("sid", "sample_idx", "rank", "energy", "energy_initial", "judge_energy", "ref_energy", "delta",
              "fmax", "converged", "relax_steps", "desorbed", "dissociated", "slab_moved", "slab_max_disp",
              "disqualified")  # fmt: skip


@dataclass
class ScoreConfig:
    """Plain values of a scoring run; the flags of ``sfm/tasks/score.py`` have these names."""

    optimizer: str = "fire"
    fmax: float = 0.05          # eV/A, convergence on free atoms
    steps: int = 300            # optimiser step cap; 0: predict only, no relaxation
    batch_size: int = 32        # structures relaxed together
    max_atoms: int | None = None  # atoms per model call (relax_batch), None: the whole batch
    judge: str = "none"
    slab_threshold: float = 1.0  # A
    exclude: tuple[str, ...] = ANOMALIES  # anomaly kinds that disqualify a sample
    threshold: float = 0.1      # eV, success@k
    ks: tuple[int, ...] = (1,)  # success@k reported for these k and for the largest sample count
    device: str = "cpu"
    progress: bool = True


def read_samples(path) -> list[Data]:
    """Samples of an OC20 LMDB (file or folder of shards) or an extxyz file (``.xyz``/``.extxyz``:
    ``sid`` and ``sample_idx`` from each frame's info, tags, FixAtoms -> ``fixed``). A sample
    without ``sample_idx`` gets its order among the samples of its sid. Raises ValueError naming
    the entry if a sample has no sid."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"samples {path}: no such file or directory")
    if path.suffix in EXTXYZ_SUFFIXES:
        import ase.io

        items = []
        for i, atoms in enumerate(ase.io.read(path, ":", format="extxyz")):
            if "sid" not in atoms.info:
                raise ValueError(f"{path} frame {i}: no 'sid' in the frame's info (needed to group samples by system)")
            info = {"sid": plain_sid(atoms.info["sid"])}
            if "sample_idx" in atoms.info:
                info["sample_idx"] = int(atoms.info["sample_idx"])
            items.append(atoms_to_data(atoms, **info))
    elif path.is_dir() or path.suffix == ".lmdb":
        dataset = LmdbDataset(path)
        items = [dataset[i] for i in range(len(dataset))]
    else:
        raise ValueError(f"samples {path}: expected an OC20 LMDB (file .lmdb or folder of shards) or an extxyz "
                         f"({'/'.join(EXTXYZ_SUFFIXES)})")  # fmt: skip
    for i, d in enumerate(items):
        if "sid" not in d:
            raise ValueError(f"{path}[{i}]: sample has no 'sid' (the input system it belongs to)")
    for d, idx in zip(items, sample_indices(items)):
        d.sample_idx = idx
        d.fixed = fixed_mask(d)
    return items


def sample_indices(samples) -> list[int]:
    """Each sample's ``sample_idx``, or, where it has none, its order among its sid's samples."""
    seen, out = Counter(), []
    for d in samples:
        out.append(int(d.sample_idx) if "sample_idx" in d else seen[sid_of(d)])
        seen[sid_of(d)] += 1
    return out


def first_samples(samples: list[Data], k: int) -> list[Data]:
    """The samples with the ``k`` lowest ``sample_idx`` of each sid (file order kept)."""
    index = sample_indices(samples)
    by_sid = defaultdict(list)
    for i, d in enumerate(samples):
        by_sid[sid_of(d)].append(index[i])
    keep = {sid: set(sorted(idx)[:k]) for sid, idx in by_sid.items()}
    return [d for i, d in enumerate(samples) if index[i] in keep[sid_of(d)]]


def read_references(path) -> dict:
    """``{sid: Data}`` of a reference LMDB (an IS2RE split)."""
    dataset = LmdbDataset(path)
    return {sid_of(d): d for d in (dataset[i] for i in range(len(dataset)))}


# ---------------------------------------------------------------- judge


def check_emt_elements(structures: list[Data]) -> None:
    """ValueError naming the first structure with an element EMT does not cover."""
    from ase.calculators.emt import parameters
    from ase.data import atomic_numbers

    covered = {atomic_numbers[s] for s in parameters}
    for d in structures:
        bad = sorted(set(d.atomic_numbers.tolist()) - covered)
        if bad:
            raise ValueError(f"EMT judge: sid {sid_of(d)} has elements EMT does not cover (Z = {bad}); "
                             f"EMT knows {' '.join(parameters)}")  # fmt: skip


def emt_energies(structures: list[Data], pos: list[torch.Tensor] | None = None) -> np.ndarray:
    """[n] EMT potential energies (eV) of ``structures`` (at ``pos`` where given)."""
    check_emt_elements(structures)
    items = [minimal(d, i, None if pos is None else pos[i]) for i, d in enumerate(structures)]
    return EMTFn()(collate(items))[0].double().numpy()


def emt_offset_from_reference(ref: Data) -> float:
    """``E_slab + E_gas`` of a reference entry: ``E_EMT(pos_relaxed) - y_relaxed`` (eV)."""
    return float(emt_energies([ref], [ref.pos_relaxed])[0]) - float(ref.y_relaxed)


def emt_offset_from_recipe(sample: Data) -> float:
    """``E_slab + E_gas`` by the demo world's recipe (sfm/data/demo.py): the clean slab (tags
    0, 1 at the sample's input positions) relaxed with EMT + LBFGS, plus gas references."""
    from ase.data import chemical_symbols

    from sfm.data.demo import gas_references, relax

    tags = sample.tags.numpy()
    traj = relax(data_to_atoms(sample)[tags != 2])
    gas = gas_references()
    return float(traj.energies[-1]) + sum(gas[chemical_symbols[z]] for z in sample.atomic_numbers[tags == 2].tolist())


# ---------------------------------------------------------------- scoring


@dataclass
class Scored:
    """Result of :func:`score`: ``records`` (one scored Data per sample, ranked within each sid,
    systems in order of first appearance), ``rows`` (CSV rows, same order), ``systems``
    (per-system dicts) and ``summary``."""

    records: list[Data]
    rows: list[dict]
    systems: list[dict]
    summary: dict = field(default_factory=dict)


def minimal(d: Data, key: int, pos: torch.Tensor | None = None) -> Data:
    """What a relaxation reads of a sample (other stored fields stay out of the batch); ``sid`` =
    ``key``, unique per sample (EMTFn keeps one calculator per sid)."""
    return Data(pos=(d.pos if pos is None else pos).float().cpu(), cell=as_cell(d.cell)[None].float().cpu(),
                atomic_numbers=d.atomic_numbers.long().cpu(), natoms=int(d.natoms), tags=d.tags.long().cpu(),
                fixed=fixed_mask(d).cpu(), sid=key)  # fmt: skip


def _relax(model_or_fn, samples: list[Data], cfg: ScoreConfig, desc: str, pos: list | None = None) -> list[dict]:
    """Relax (or, steps=0, evaluate) ``samples`` in batches; per sample a dict of results (CPU)."""
    out = []
    bar = tqdm(total=len(samples), desc=desc, unit="struct", disable=not cfg.progress, mininterval=1.0)
    try:
        for start in range(0, len(samples), cfg.batch_size):
            chunk = [minimal(samples[i], i, None if pos is None else pos[i])
                     for i in range(start, min(start + cfg.batch_size, len(samples)))]
            batch = collate(chunk).to(cfg.device)
            initial = torch.zeros(batch.num_graphs, dtype=torch.float64)

            def first(frame):
                if frame.step == 0:
                    initial[frame.index.cpu()] = frame.energy.detach().double().cpu()
                if cfg.progress and frame.step % 10 == 0:
                    bar.set_postfix(step=frame.step, relaxing=len(frame.index), refresh=False)

            res = relax_batch(model_or_fn, batch, cfg.optimizer, cfg.fmax, cfg.steps, callback=first,
                              max_atoms=cfg.max_atoms)  # fmt: skip
            ptr = batch.ptr.cpu()
            for b in range(batch.num_graphs):
                s = slice(int(ptr[b]), int(ptr[b + 1]))
                out.append(dict(pos=res.pos[s].detach().float().cpu(), force=res.forces[s].detach().float().cpu(),
                                energy=float(res.energy[b]), energy_initial=float(initial[b]),
                                fmax=float(res.fmax[b]), converged=bool(res.converged[b]),
                                relax_steps=int(res.steps[b])))  # fmt: skip
            bar.update(len(chunk))
    finally:
        bar.close()
    return out


def _anomalies(sample: Data, final_pos: torch.Tensor, ref: Data | None, slab_threshold: float) -> dict:
    tags, numbers, cell = sample.tags, sample.atomic_numbers, as_cell(sample.cell)
    if not (tags == 2).any():
        return {"desorbed": False, "dissociated": False, "slab_moved": False, "slab_max_disp": 0.0}
    same = ref is not None and torch.equal(ref.atomic_numbers.long(), numbers.long()) and torch.equal(ref.tags, tags)
    before = ref.pos if same else sample.pos
    disp = slab_max_displacement(sample.pos, final_pos, cell, tags)
    return {"desorbed": adsorbate_desorbed(numbers, final_pos, cell, tags),
            "dissociated": adsorbate_dissociated(numbers, before, final_pos, cell, tags),
            "slab_moved": disp > slab_threshold, "slab_max_disp": disp}


def _with(d: Data, **fields) -> Data:
    """A shallow copy of ``d`` with ``fields`` set (the caller's Data is left alone)."""
    out = copy.copy(d)
    for k, v in fields.items():
        out[k] = v
    return out


def check_config(cfg: ScoreConfig) -> None:
    """ValueError naming the first bad setting."""
    if cfg.judge not in JUDGES:
        raise ValueError(f"judge must be one of {JUDGES}, got {cfg.judge!r}")
    if cfg.optimizer not in ("fire", "lbfgs"):
        raise ValueError(f"optimizer must be 'fire' or 'lbfgs', got {cfg.optimizer!r}")
    bad = set(cfg.exclude) - set(ANOMALIES)
    if bad:
        raise ValueError(f"exclude: unknown anomaly kind(s) {sorted(bad)}; known: {list(ANOMALIES)}")
    if cfg.steps < 0 or cfg.batch_size < 1 or not cfg.fmax > 0 or any(k < 1 for k in cfg.ks):
        raise ValueError("steps must be >= 0, batch_size >= 1, fmax > 0 and every k >= 1")


def score(model, samples: list[Data], cfg: ScoreConfig, references: dict | None = None) -> Scored:
    """Score ``samples`` (see the module docstring); ``references``: ``{sid: Data}`` or None."""
    check_config(cfg)
    if not samples:
        raise ValueError("no samples to score")
    references = references or {}
    index = sample_indices(samples)
    samples = [_with(d, fixed=fixed_mask(d)) for d in samples]
    if cfg.judge != "none":
        check_emt_elements(samples)
    relaxed = _relax(model, samples, cfg, "relax (model)" if cfg.steps else "predict (model)")

    judge = [None] * len(samples)
    if cfg.judge != "none":
        final = [r["pos"] for r in relaxed]
        if cfg.judge == "emt_relax":
            emt_cfg = ScoreConfig(**{**asdict(cfg), "device": "cpu", "max_atoms": None})
            emt_runs = _relax(EMTFn(), samples, emt_cfg, "relax (EMT judge)", pos=final)
            for r, e in zip(relaxed, emt_runs):
                r["judge_pos"] = e["pos"]
            raw = [e["energy"] for e in emt_runs]
        else:
            raw = emt_energies(samples, final).tolist()
        offsets = {}
        for d in tqdm(samples, desc="EMT references", disable=not cfg.progress, mininterval=1.0):
            sid = sid_of(d)
            if sid not in offsets:
                ref = references.get(sid)
                ok = ref is not None and "pos_relaxed" in ref and "y_relaxed" in ref
                offsets[sid] = emt_offset_from_reference(ref) if ok else emt_offset_from_recipe(d)
        judge = [e - offsets[sid_of(d)] for e, d in zip(raw, samples)]

    groups = defaultdict(list)
    for i, d in enumerate(samples):
        groups[sid_of(d)].append(i)
    records, rows, systems = [], [], []
    for sid, members in groups.items():
        ref = references.get(sid)
        ref_energy = float(ref.y_relaxed) if ref is not None and "y_relaxed" in ref else math.nan
        info = {}
        for i in members:
            final = relaxed[i].get("judge_pos", relaxed[i]["pos"])
            flags = _anomalies(samples[i], final, ref, cfg.slab_threshold)
            flags["disqualified"] = any(flags[k] for k in cfg.exclude)
            info[i] = flags
        order = sorted(members, key=lambda i: (info[i]["disqualified"], relaxed[i]["energy"], index[i]))
        for rank, i in enumerate(order):
            d, r = samples[i], relaxed[i]
            row = {"sid": sid, "sample_idx": index[i], "rank": rank, "energy": r["energy"],
                   "energy_initial": r["energy_initial"],
                   "judge_energy": judge[i] if judge[i] is not None else math.nan, "ref_energy": ref_energy,
                   "fmax": r["fmax"], "converged": r["converged"], "relax_steps": r["relax_steps"], **info[i]}  # fmt: skip
            chosen = row["judge_energy"] if cfg.judge != "none" else row["energy"]
            row["delta"] = chosen - ref_energy
            rows.append(row)
            rec = Data(**{k: d[k] for k in d.keys()})
            rec.pos_initial, rec.pos, rec.force, rec.sample_idx = d.pos, r["pos"], r["force"], index[i]
            for key in ("energy", "energy_initial", "fmax", "converged", "relax_steps", "rank", *ANOMALIES,
                        "slab_max_disp", "disqualified"):  # fmt: skip
                rec[key] = row[key]
            if cfg.judge != "none":
                rec.judge_energy = row["judge_energy"]
                if "judge_pos" in r:
                    rec.pos_judge = r["judge_pos"]
            records.append(rec)
        best = rows[-len(order)]
        systems.append({
            "sid": sid, "samples": len(order), "ranked_sample_idx": [index[i] for i in order],
            "best_sample_idx": best["sample_idx"], "best_energy": best["energy"],
            "best_judge_energy": best["judge_energy"], "ref_energy": ref_energy,
            "best_fmax": best["fmax"], "max_fmax": max(relaxed[i]["fmax"] for i in members),
            "best_converged": best["converged"], "converged": sum(relaxed[i]["converged"] for i in members),
            "qualified": sum(not info[i]["disqualified"] for i in members),
            "anomalies": {k: sum(info[i][k] for i in members) for k in ANOMALIES},
        })  # fmt: skip
    summary = summarize(rows, systems, cfg)
    without = summary["systems"] - summary["systems_with_reference"]
    if without:  # said, not left to a missing line: a test split as reference has no y_relaxed
        why = "their reference entry has no y_relaxed (a test split?)" if references else "no reference given"
        summary["success_skipped"] = f"{without} of {summary['systems']} systems: {why}"
    return Scored(records, rows, systems, summary)


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


def summarize(rows: list[dict], systems: list[dict], cfg: ScoreConfig) -> dict:
    """Counts, convergence, anomalies and (with references) success@k over all systems; each
    system's dict also gets its own ``success@k`` flags."""
    K = max(s["samples"] for s in systems)
    out = {"systems": len(systems), "samples": len(rows), "k": K, "judge": cfg.judge,
           "converged_fraction": float(np.mean([r["converged"] for r in rows])),
           "relax_steps_mean": float(np.mean([r["relax_steps"] for r in rows])),
           "anomalies": {k: int(sum(r[k] for r in rows)) for k in ANOMALIES},
           "disqualified": int(sum(r["disqualified"] for r in rows)), "excluded_kinds": list(cfg.exclude)}  # fmt: skip
    with_ref = [n for n, s in enumerate(systems) if math.isfinite(s["ref_energy"])]
    out["systems_with_reference"] = len(with_ref)
    if with_ref:
        energies = energy_matrix(rows, systems, cfg.judge != "none")[with_ref]
        ref = np.array([systems[n]["ref_energy"] for n in with_ref])
        for k in sorted({k for k in cfg.ks if k <= K} | {K}):  # k beyond the sample count would repeat @K
            out[f"success@{k}"] = success_at_k(energies, ref, k, cfg.threshold)
            for row, n in enumerate(with_ref):
                systems[n][f"success@{k}"] = bool(success_at_k(energies[row : row + 1], ref[row : row + 1], k,
                                                                cfg.threshold))  # fmt: skip
        out["success_threshold_eV"] = cfg.threshold
        out["success_energy"] = "judge" if cfg.judge != "none" else "model"
    return out


SYSTEM_FIELDS = ("sid", "samples", "ranked_sample_idx", "best_sample_idx", "best_energy", "best_judge_energy",
                 "ref_energy", "best_fmax", "max_fmax", "best_converged", "converged", "qualified")  # fmt: skip


def write_outputs(scored: Scored, out_dir, config: dict | None = None) -> dict[str, Path]:
    """Write ``out_dir/``: ``scored.lmdb`` (OC20 LMDB, one entry per sample in rank order: ``pos``
    final, ``pos_initial``, ``force`` predicted, ``energy``, ``rank``, flags ...), ``samples.csv``
    (one row per sample), ``systems.csv`` (one row per input system) and ``scores.json``
    (summary, config, systems). Returns the paths."""
    import csv

    from sfm.data import write_json, write_lmdb

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"lmdb": out / "scored.lmdb", "samples_csv": out / "samples.csv", "systems_csv": out / "systems.csv",
             "json": out / "scores.json"}  # fmt: skip
    write_lmdb(paths["lmdb"], scored.records)
    with open(paths["samples_csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(scored.rows)
    ks = sorted({k.split("@")[1] for s in scored.systems for k in s if k.startswith("success@")}, key=int)
    fields = [*SYSTEM_FIELDS, *ANOMALIES, *(f"success@{k}" for k in ks)]
    with open(paths["systems_csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        for s in scored.systems:
            writer.writerow({**s, **s["anomalies"], "ranked_sample_idx": " ".join(map(str, s["ranked_sample_idx"]))})
    report = {"summary": scored.summary, "config": config or {}, "systems": scored.systems}
    write_json(paths["json"], report)
    return paths


def format_summary(summary: dict) -> str:
    """A few lines for the terminal."""
    s = summary
    lines = [f"systems {s['systems']}  samples {s['samples']}  k {s['k']}  judge {s['judge']}",
             f"converged {s['converged_fraction']:.3f}  mean relax steps {s['relax_steps_mean']:.1f}",
             "anomalies " + "  ".join(f"{k} {v}" for k, v in s["anomalies"].items())
             + f"  (disqualified {s['disqualified']}: {','.join(s['excluded_kinds']) or 'none'})"]  # fmt: skip
    succ = [k for k in s if k.startswith("success@")]
    if succ:
        lines.append(f"placement success ({s['success_energy']} energy within {s['success_threshold_eV']} eV of "
                     f"y_relaxed, {s['systems_with_reference']} systems): "
                     + "  ".join(f"{k} {s[k]:.3f}" for k in sorted(succ, key=lambda k: int(k.split('@')[1]))))  # fmt: skip
    if "success_skipped" in s:
        lines.append(f"placement success skipped for {s['success_skipped']}")
    return "\n".join(lines)
