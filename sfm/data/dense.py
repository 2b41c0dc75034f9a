"""The dense demo split (OC20-Dense, as AdsorbML built it): many relaxed placements per system and
their minimum, the reference that placement success@k is measured against.

``python -m sfm.data.demo --out DIR --dense [--dense_test N] [--dense_val N] [--dense_train N]
[--dense_sites H] [--dense_random R] [--dense_out FOLDER] [--dense_force]``

Systems
    Every system of ``test_id`` (or its first N) and the first N of ``val_id`` and of ``train``
    of the demo world in DIR (same sid, catalyst and adsorbate). A dense training set is a build
    of train systems alone into its own folder (``--dense_test 0 --dense_val 0 --dense_train 200
    --dense_out data/demo_dense_train``), which :mod:`sfm.data.dense_targets` turns into training data. The slab is the entry's slab atoms (tags 0, 1) at
    ``pos`` (bulk-terminated, as placed); the adsorbate is its OC20 entry (SMILES from
    ``data_mapping.json``).
Placements (:mod:`sfm.data.placements`, fairchem-data-oc's heuristic and random placement)
    ``heur<i>``: the heuristic sites; when there are more than H (an alloy slab has 100-300), the
    first H of fairchem's shuffled list, a uniform subset. ``rand<i>``: R random sites. ``demo``:
    the demo world's own placement and relaxation (stored, not recomputed).
Relaxation and energies
    :func:`sfm.data.emt_world.relax` (EMT, LBFGS to fmax 0.05 eV/A within 300 steps, subsurface
    fixed), the clean slab relaxed the same way. Energies are referenced like the demo world's
    ``y_relaxed``: ``y = E - E_slab - E_gas`` (eV), so a dense energy and a demo energy of the same
    sid compare directly (the slab positions are the stored float32 ones: E_slab agrees with the
    demo's to about 1e-5 eV).
Anomalies and the reference
    Each relaxed placement is checked with :func:`sfm.data.anomaly.detect_atoms` against the
    relaxed clean slab (desorbed, dissociated, surface_changed, intercalated), and an unconverged
    relaxation is flagged ``unconverged``. The reference (:mod:`sfm.data.dense_reference`) is the lowest
    ``y_relaxed`` over the placements not disqualified: carrying none of the ``exclude`` flags
    and converged. AdsorbML excludes every kind; the demo world's default (:data:`EXCLUDE`, as its
    scripts score) keeps ``dissociated`` placements, because EMT stretches X-H bonds past
    AdsorbML's bond rule: on test_id 78 % of the placements are "dissociated" and 44 of 100
    systems would have no reference. A system without one takes no part in success@k. The
    mapping stores every flag, so either policy is computed from it.
Layout (OC20's, under ``DIR/is2re_dense`` or ``--dense_out``)
    ``{test_id,val_id,train}/data.lmdb``: one IS2RE entry per placement: ``sid`` (the system's),
    ``config_idx`` (its position in the system's ``configs`` in the mapping), ``atomic_numbers``,
    ``pos`` (the placement), ``pos_relaxed``, ``cell``, ``natoms``, ``tags``, ``fixed``,
    ``y_init``, ``y_relaxed``. Entries of one sid are consecutive, in ``configs`` order.
    ``mapping.json`` (AdsorbML's ``oc20dense_mapping`` and targets in one file): sid ->
    ``split, catalyst, facet, adsorbate, e_slab, e_gas`` (eV, to reference a raw EMT energy),
    and ``configs``: a list of ``config_id,
    source, site [3] A (null for demo), y_init, y_relaxed, steps, anomalies`` (flag names).
    ``summary.json``: settings, counts and timings.

Determinism: system ``sid`` draws its placements from ``SeedSequence([seed, sid])``; the output
does not depend on ``--workers``. Built in a temporary folder renamed onto ``is2re_dense`` when
complete; reused when the settings match, rebuilt with ``--dense_force``. A split with no system
is not written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms

from sfm.data.anomaly import detect_atoms
from sfm.data.demo import building, to_is2re, warm_caches
from sfm.data.dense_reference import ADSORBML_EXCLUDE, EXCLUDE, reference
from sfm.data.emt_world import gas_references, relax_clean_slab, relax_placement
from sfm.data.lattice import as_cell
from sfm.data.lmdb_dataset import LmdbDataset, LmdbWriter
from sfm.data.parallel import ordered_map
from sfm.data.placements import oc20_adsorbate, placements
from sfm.data.structure import ADSORBATE_TAG

DENSE_SPLITS = ("test_id", "val_id", "train")
VERSION = 2  # bump when the output changes: an is2re_dense built by another version is not reused


@dataclass(frozen=True)
class DenseConfig:
    """What a dense build depends on (stored in ``summary.json``; a mismatch means rebuild).

    ``num_val`` / ``num_train`` / ``num_test``: systems taken from val_id / train / test_id (the
    first ones; ``num_test`` None: all); ``max_sites``: heuristic placements per system at most
    (None: every site); ``num_random``: random placements per system; ``seed``."""

    num_val: int = 25
    num_train: int = 25
    max_sites: int | None = 8
    num_random: int = 8
    seed: int = 0
    num_test: int | None = None
    version: int = VERSION


@dataclass(frozen=True)
class Job:
    """One system to relax densely: its demo entry as arrays (A, eV) and its metadata."""

    split: str
    sid: int
    numbers: np.ndarray
    tags: np.ndarray
    cell: np.ndarray
    pos: np.ndarray
    pos_relaxed: np.ndarray
    y_init: float
    y_relaxed: float
    meta: dict
    config: DenseConfig


def relax_system(job: Job) -> dict:
    """Place, relax and flag every placement of one system; the mapping record plus the
    structures (``structures``: per config, pos and pos_relaxed [K,3] A) and ``cpu_seconds``."""
    start = time.process_time()
    slab_mask = job.tags != ADSORBATE_TAG
    slab = Atoms(
        numbers=job.numbers[slab_mask], positions=job.pos[slab_mask], cell=job.cell, tags=job.tags[slab_mask], pbc=True
    )
    slab.set_constraint(FixAtoms(mask=slab.get_tags() == 0))
    try:
        clean = relax_clean_slab(slab)
    except RuntimeError as err:
        raise RuntimeError(f"sid {job.sid}: {err} (the demo world's did)") from err
    ads = oc20_adsorbate(job.meta["adsorbate"])
    gas = gas_references()
    e_gas = float(sum(gas[s] for s in ads.atoms.get_chemical_symbols()))
    e_slab = float(clean.get_potential_energy())
    seed = int(np.random.SeedSequence([job.config.seed, job.sid]).generate_state(1)[0])

    configs, structures = [], []
    for p in placements(slab, ads, job.config.num_random, seed, job.config.max_sites):
        if not np.array_equal(p.atoms.numbers, job.numbers):
            raise RuntimeError(f"sid {job.sid}: the placement's atoms are not in the demo entry's order")
        initial = p.atoms.positions.copy()
        result = relax_placement(p.atoms, clean, e_slab + e_gas)
        configs.append({"config_id": p.config_id, "source": p.source, "site": p.site.round(4).tolist(), **result})
        structures.append((initial, p.atoms.positions.copy()))
    # the demo world's own placement: its relaxation is stored already
    initial = Atoms(numbers=job.numbers, positions=job.pos, cell=job.cell, tags=job.tags, pbc=True)
    final = Atoms(numbers=job.numbers, positions=job.pos_relaxed, cell=job.cell, tags=job.tags, pbc=True)
    configs.append(
        {
            "config_id": "demo",
            "source": "demo",
            "site": None,
            "y_init": job.y_init,
            "y_relaxed": job.y_relaxed,
            "steps": int(job.meta["steps"]),
            "anomalies": detect_atoms(initial, final, clean).labels(),
        }
    )
    structures.append((job.pos, job.pos_relaxed))

    record = {
        "split": job.split,
        **{k: job.meta[k] for k in ("catalyst", "facet", "adsorbate")},
        "e_slab": e_slab,
        "e_gas": e_gas,
        "configs": configs,
    }
    return {"record": record, "structures": structures, "cpu_seconds": time.process_time() - start}


def jobs(world: Path, config: DenseConfig) -> list[Job]:
    """The systems to build, split by split in :data:`DENSE_SPLITS` order, read from ``world``."""
    if not (world / "data_mapping.json").is_file():
        raise FileNotFoundError(f"{world}: no demo world here (no data_mapping.json) to build the dense split from")
    mapping = json.loads((world / "data_mapping.json").read_text())
    sizes = {"test_id": config.num_test, "val_id": config.num_val, "train": config.num_train}
    out = []
    for split in DENSE_SPLITS:
        path = world / "is2re" / split / "data.lmdb"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no demo world split to build the dense split from")
        data = LmdbDataset(path)
        n = len(data) if sizes[split] is None else min(sizes[split], len(data))
        for i in range(n):
            d = data[i]
            sid = int(d.sid)
            if str(sid) not in mapping:
                raise KeyError(f"{world / 'data_mapping.json'}: no entry for sid {sid} of {path}")
            out.append(
                Job(
                    split,
                    sid,
                    d.atomic_numbers.numpy().astype(int),
                    d.tags.numpy().astype(int),
                    as_cell(d.cell).double().numpy(),
                    d.pos.double().numpy(),
                    d.pos_relaxed.double().numpy(),
                    float(d.y_init),
                    float(d.y_relaxed),
                    mapping[str(sid)],
                    config,
                )
            )
    return out


def build_dense(out: Path, world: Path, config: DenseConfig, workers: int, progress: bool = True) -> dict:
    """Build the dense split of ``world`` into the (new) folder ``out``; return the summary."""
    start = time.time()
    todo = jobs(world, config)
    warm_caches()
    mapping, cpu = {}, 0.0
    with ordered_map(relax_system, todo, workers, "dense split", "system", progress) as (results, bar):
        for split in [s for s in DENSE_SPLITS if any(j.split == s for j in todo)]:
            with LmdbWriter(out / split / "data.lmdb") as writer:
                for job in [j for j in todo if j.split == split]:
                    result = next(results)
                    record = result["record"]
                    for idx, (conf, (pos, pos_relaxed)) in enumerate(zip(record["configs"], result["structures"])):
                        entry = {
                            "atomic_numbers": job.numbers,
                            "cell": job.cell,
                            "tags": job.tags,
                            "pos": pos,
                            "pos_relaxed": pos_relaxed,
                            "y_init": conf["y_init"],
                            "y_relaxed": conf["y_relaxed"],
                        }
                        data = to_is2re(entry, job.sid)
                        data.config_idx = idx
                        writer.append(data)
                    mapping[str(job.sid)] = record
                    cpu += result["cpu_seconds"]
                    bar.update()
    (out / "mapping.json").write_text(json.dumps(mapping, indent=1))
    summary = summarize(mapping)
    summary.update(
        config=asdict(config),
        build_seconds=round(time.time() - start, 1),
        workers=workers,
        cpu_seconds=round(cpu, 1),
        cpu_seconds_per_system=round(cpu / max(len(todo), 1), 2),
    )
    return summary


def summarize(mapping: dict) -> dict:
    """Counts of a dense mapping per split: systems, placements, flags, and for the default and
    AdsorbML's exclusion the systems without a reference and where the minimum came from."""
    out = {}
    for split in DENSE_SPLITS:
        recs = [r for r in mapping.values() if r["split"] == split]
        if not recs:
            continue
        configs = [c for r in recs for c in r["configs"]]
        flags = {}
        for f in (f for c in configs for f in c["anomalies"]):
            flags[f] = flags.get(f, 0) + 1
        per = {s: [sum(c["source"] == s for c in r["configs"]) for r in recs] for s in ("heuristic", "random")}
        out[split] = {
            "systems": len(recs),
            "placements": len(configs),
            "heuristic_per_system": {
                "min": min(per["heuristic"]),
                "max": max(per["heuristic"]),
                "mean": round(float(np.mean(per["heuristic"])), 2),
            },
            "random_per_system": max(per["random"]),
            "flagged": dict(sorted(flags.items())),
            "flagged_fraction": round(sum(bool(c["anomalies"]) for c in configs) / len(configs), 3),
            "relax_steps_mean": round(float(np.mean([c["steps"] for c in configs])), 1),
        }
        for name, exclude in (("default", EXCLUDE), ("adsorbml", ADSORBML_EXCLUDE)):
            best = [reference(r, exclude) for r in recs]
            sources = {}
            for b in best:
                sources[b["source"] if b else "none"] = sources.get(b["source"] if b else "none", 0) + 1
            out[split][f"reference_{name}"] = {
                "exclude": list(exclude),
                "from": dict(sorted(sources.items())),
                "systems_without": sum(b is None for b in best),
            }
    return out


def make_dense(
    world: str | os.PathLike,
    config: DenseConfig = DenseConfig(),
    workers: int = 2,
    force: bool = False,
    progress: bool = True,
    out: str | os.PathLike | None = None,
) -> dict:
    """Build (or reuse) ``out`` (default ``world/is2re_dense``) from the demo world ``world``;
    return its summary (also its ``summary.json``).

    Reused when it holds a complete build with the same ``config``; rebuilt with ``force``. The
    build goes to a temporary sibling folder renamed onto ``out`` at the end."""
    world = Path(world)
    out = world / "is2re_dense" if out is None else Path(out)
    existing = out / "summary.json"
    if out.exists() and not force:
        if not existing.is_file():
            raise FileExistsError(
                f"{out} exists but holds no complete dense split (no summary.json); use --dense_force"
            )
        summary = json.loads(existing.read_text())
        # num_test came later: a build without it took every test_id system
        if {"num_test": None, **summary.get("config", {})} != asdict(config):
            raise FileExistsError(
                f"{out} was built with {summary.get('config')}, not {asdict(config)}; use --dense_force"
            )
        return summary
    with building(out) as tmp:
        summary = build_dense(tmp, world, config, workers, progress)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def format_dense_summary(summary: dict, out) -> str:
    """A few lines of text (``summary.json`` has it all)."""
    c = summary["config"]
    lines = [
        (
            f"dense split in {out}: at most {c['max_sites']} heuristic + {c['num_random']} random placements "
            f"+ the demo's per system, built in {summary['build_seconds']} s with {summary['workers']} worker(s), "
            f"{summary['cpu_seconds_per_system']} CPU-s per system"
        )
    ]
    for split in DENSE_SPLITS:
        if split in summary:
            s = summary[split]
            lines.append(
                f"  {split:<8} {s['systems']:>4} systems, {s['placements']:>5} relaxed placements, "
                f"{s['flagged_fraction']:.0%} flagged {s['flagged']}"
            )
            for name in ("default", "adsorbml"):
                r = s[f"reference_{name}"]
                lines.append(
                    f"           minimum excluding {','.join(r['exclude'])}: from {r['from']}, "
                    f"{r['systems_without']} systems without a valid placement"
                )
    return "\n".join(lines)
