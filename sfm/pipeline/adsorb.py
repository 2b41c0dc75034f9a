"""Adsorption-energy search (AdsorbML's workflow) on a user's slab and adsorbate.

    result = run_adsorb(AdsorbConfig(out="runs/adsorb/Cu111_OH", slab="Cu111.cif", adsorbate="*OH",
                                     heuristic=True, random=10, relaxer="ase.calculators.emt:EMT"))

What it does, in order (``sfm.adsorb`` and ``python -m sfm.tasks.adsorb`` both call
:func:`run_adsorb`):

1. **Slab.** ``slab``: any file ASE reads (CIF, POSCAR, extxyz, traj, ``file.db@id=3``; a
   multi-frame file: its last frame, or ``file@index``). The surface is the a-b plane, c points
   out of it and must leave at least ``min_vacuum`` A of vacuum. Tags: the file's if they are
   OC20 tags (both 0 and 1 present, nothing but 0, 1; a 2 is refused: give the clean slab);
   otherwise (no tags, or ASE's layer numbers 1, 2, ...) the rule of the demo world: atoms in
   the upper half of the distinct heights are the surface (1), the rest subsurface (0). Held atoms: the
   file's FixAtoms if any, else tag 0. Or ``bulk`` + ``miller``: the slab OC20 cuts from
   that bulk (fairchem-data-oc, termination ``slab_index``), tagged and held as OC20 does.
2. **Adsorbate.** An OC20 name (``*OH``; fairchem-data-oc's list of 86) with its binding
   atom(s), or a structure file with ``binding`` atom indices.
3. **Placements**, each labelled by its source: ``heuristic`` (every OC20 heuristic site) and
   ``random`` (``random`` random sites, AdsorbML's random placements), both made by
   :mod:`sfm.data.placements` (fairchem-data-oc's ``AdsorbateSlabConfig``), ``generated`` (``num_generated``
   adsorbates inpainted from noise on the given slab by the ``diffusion`` checkpoint) and,
   with ``t_start < 1``, ``refined`` (each heuristic placement taken as the noisy state at
   ``t_start`` and denoised by the same checkpoint, ``gen.py --no_renoise``).
4. **Relaxation** with the subsurface held: an sfm S2EF checkpoint relaxes all placements in
   batches (``sfm.relax.relax_batch``); a calculator ``module:factory`` (``factory()`` returns
   an ASE calculator) runs ASE's optimiser on one placement after another.
5. **Energies.** ``energy="referenced"`` (default for sfm checkpoints, trained on OC20-style
   adsorption energies): the relaxed energy is the adsorption energy. ``"total"`` (default
   for a calculator): ``E_ads = E - E_slab - sum of gas references``, with the clean slab
   relaxed by the same relaxer and the references OC20's (H = E(H2)/2, O = E(H2O) - E(H2),
   C = E(CO) - O, N = E(N2)/2), molecules relaxed in a 20 A periodic box by the same relaxer.
6. **Anomalies** (:mod:`sfm.data.anomaly`, AdsorbML's four kinds). The adsorbate's bonds are
   compared with the adsorbate as given (the OC20 list or the file), so a placement generated
   already broken counts as dissociated; the surface with the relaxed clean slab (total
   energies) or the input slab. **Rank**: valid placements by adsorption energy, 0 = lowest;
   anomalous ones get no rank.
7. **Judge** (optional, AdsorbML's ML+SP): ``judge`` (a checkpoint or ``module:factory``) gives a
   single-point energy of the ``top_k`` best relaxed placements, its adsorption energy as in 5.

Outputs in ``out`` (:mod:`sfm.pipeline.adsorb_report` writes the report): ``placements.csv``
and ``placements.json`` (one row per placement: index, source, energy, adsorption_energy,
converged, steps, fmax, anomalies, rank; the json adds the summary and the settings),
``relaxed.extxyz`` (every relaxed structure with its energy and forces), ``best_{r}.cif`` for
the ``top_k`` best, ``report.md`` with pictures in ``figures/``. Work in progress is kept in
``out/work/`` (the placements, the relaxed chunks, the references): a rerun of the same
settings resumes there; other settings in the same ``out`` are refused.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.constraints import FixAtoms

from sfm.data.anomaly import KINDS, detect
from sfm.data.demo import Adsorbate
from sfm.data.structure import ADSORBATE_TAG

SOURCES = ("generated", "refined", "heuristic", "random")
GAS_MOLECULES = ("H2", "H2O", "CO", "N2")
BOX = 20.0  # A, periodic box of the gas-phase reference molecules
REFERENCE_STEPS = 1000  # step cap of the clean slab and gas relaxations (whatever the placements' cap)
_DEFINING = (
    "slab",
    "bulk",
    "miller",
    "slab_index",
    "adsorbate",
    "binding",
    "diffusion",
    "num_generated",
    "sampler",
    "sample_steps",
    "t_start",
    "heuristic",
    "max_heuristic",
    "random",
    "relaxer",
    "judge",
    "energy",
    "optimizer",
    "fmax",
    "steps",
    "batch_size",
    "seed",
    "min_vacuum",
)


@dataclass
class AdsorbConfig:
    """Plain values of one search; ``python -m sfm.tasks.adsorb`` flags have these names."""

    out: str
    relaxer: str  # S2EF checkpoint (.pt) or "module:factory" of an ASE calculator
    adsorbate: str = "*OH"  # OC20 name or a structure file (then give binding)
    slab: str | None = None  # slab file (module doc), or bulk + miller
    bulk: str | None = None
    miller: tuple[int, int, int] | None = None
    slab_index: int = 0  # bulk: which termination fairchem cuts (0 = its first)
    binding: tuple[int, ...] | None = None  # adsorbate file: indices of its binding atom(s)
    judge: str | None = None  # single point on the top_k (AdsorbML's ML+SP): checkpoint or module:factory
    diffusion: str | None = None  # diffusion checkpoint for generated / refined placements
    num_generated: int = 0
    sampler: str = "ode"
    sample_steps: int = 25
    t_start: float = 1.0  # < 1: also refine each heuristic placement from this level
    heuristic: bool = False
    max_heuristic: int | None = None  # at most this many heuristic sites (a uniform subset), None: all
    random: int = 0
    energy: str = "auto"  # auto | referenced | total
    optimizer: str = "fire"
    fmax: float = 0.05  # eV/A on free atoms
    steps: int = 300
    batch_size: int = 16  # placements relaxed (and generated) together
    max_atoms: int | None = None  # atoms per model call in batched relaxation
    top_k: int = 5
    seed: int = 0
    min_vacuum: float = 6.0  # A along c between the slab and its periodic image
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        if self.miller is not None:
            self.miller = tuple(int(m) for m in self.miller)
        if self.binding is not None:
            self.binding = tuple(int(b) for b in self.binding)

    def defining(self) -> dict:
        """The settings that define the placements and their relaxation (recorded in work/run.json)."""
        out = {k: getattr(self, k) for k in _DEFINING}
        for k in ("slab", "bulk", "diffusion"):
            out[k] = str(Path(out[k]).resolve()) if out[k] else None
        for k in ("relaxer", "judge"):
            if out[k] and ":" not in out[k]:
                out[k] = str(Path(out[k]).resolve())
        return json.loads(json.dumps(out))


@dataclass
class AdsorbResult:
    """``rows`` (one dict per placement, in placement order), ``summary``, ``best`` (the
    relaxed Atoms of the ranked placements, best first) and ``out`` (the folder)."""

    rows: list[dict]
    summary: dict
    best: list[Atoms] = field(repr=False)
    out: Path


# ---------------------------------------------------------------- inputs


def check_config(cfg: AdsorbConfig) -> None:
    """ValueError / FileNotFoundError naming the first bad setting (before any work)."""
    if (cfg.slab is None) == (cfg.bulk is None):
        raise ValueError("give the surface as slab (a structure file) or as bulk + miller, not both or neither")
    if cfg.bulk is not None and cfg.miller is None:
        raise ValueError("bulk needs miller (h, k, l) to cut the slab")
    if cfg.miller is not None and (len(cfg.miller) != 3 or not any(cfg.miller)):
        raise ValueError(f"miller must be three integers, not all zero, got {cfg.miller}")
    if cfg.energy not in ("auto", "referenced", "total"):
        raise ValueError(f"energy must be auto, referenced or total, got {cfg.energy!r}")
    if cfg.optimizer not in ("fire", "lbfgs"):
        raise ValueError(f"optimizer must be fire or lbfgs, got {cfg.optimizer!r}")
    if cfg.num_generated < 0 or cfg.random < 0 or cfg.batch_size < 1 or cfg.steps < 0 or not cfg.fmax > 0:
        raise ValueError("num_generated and random must be >= 0, batch_size >= 1, steps >= 0, fmax > 0")
    if cfg.max_heuristic is not None and cfg.max_heuristic < 1:
        raise ValueError(f"max_heuristic must be >= 1 or None (all sites), got {cfg.max_heuristic}")
    if not 0.0 < cfg.t_start <= 1.0:
        raise ValueError(f"t_start must be in (0, 1], got {cfg.t_start}")
    if (cfg.num_generated or cfg.t_start < 1.0) and cfg.diffusion is None:
        raise ValueError("num_generated > 0 and t_start < 1 need a diffusion checkpoint")
    if cfg.t_start < 1.0 and not cfg.heuristic:
        raise ValueError("t_start < 1 refines the heuristic placements: also ask for heuristic")
    if not (cfg.num_generated or cfg.heuristic or cfg.random):
        raise ValueError("no placements asked for: give num_generated, heuristic and/or random")
    for name in ("slab", "bulk", "diffusion"):
        path = getattr(cfg, name)
        if path is not None and not Path(_file_part(path)).exists():
            raise FileNotFoundError(f"{name} {path}: no such file")
    for name in ("relaxer", "judge"):
        spec = getattr(cfg, name)
        if spec is not None and ":" not in spec and not Path(spec).exists():
            raise FileNotFoundError(f"{name} {spec}: no such checkpoint (or give module:factory)")


def _file_part(spec: str) -> str:
    """``file.db@id=3`` -> ``file.db`` (ASE's ``file@index`` syntax)."""
    return spec.split("@", 1)[0] if not Path(spec).exists() else spec


def read_structure(spec: str, what: str) -> Atoms:
    """One structure from a file ASE reads (its last frame unless ``file@index``); ValueError
    naming the file if it has no cell."""
    import ase.io

    try:
        atoms = ase.io.read(spec) if "@" in spec and not Path(spec).exists() else ase.io.read(spec, index=-1)
    except Exception as err:  # noqa: BLE001  (ASE raises many types for files it cannot parse; named here)
        raise ValueError(f"{what} {spec}: ASE cannot read it ({type(err).__name__}: {err})") from None
    if isinstance(atoms, list):  # a selection (file@slice, db@query) that holds one structure is that one
        if len(atoms) != 1:
            raise ValueError(f"{what} {spec}: the index selects {len(atoms)} structures; select one")
        atoms = atoms[0]
    if what != "adsorbate" and atoms.cell.rank < 3:
        raise ValueError(
            f"{what} {spec}: the structure has no (full 3-D) cell; a slab needs its periodic cell with vacuum along c"
        )
    return atoms


def vacuum_gap(atoms: Atoms) -> float:
    """Largest empty gap (A) along the surface normal between the slab and its periodic image."""
    frac = np.sort(atoms.get_scaled_positions(wrap=True)[:, 2])
    gaps = np.diff(np.concatenate([frac, frac[:1] + 1.0]))
    height = atoms.cell.volume / np.linalg.norm(np.cross(atoms.cell[0], atoms.cell[1]))
    return float(gaps.max() * height)


def prepare_slab(atoms: Atoms, source: str, min_vacuum: float) -> Atoms:
    """The slab as the search uses it: checked (module doc), made whole along c with its
    vacuum gap at the cell boundary, tags 0/1, FixAtoms on the held atoms, pbc True."""
    from sfm.data.demo import surface_tags

    cell = atoms.cell.array
    if np.abs(cell[:2, 2]).max() > 1e-6:
        raise ValueError(
            f"slab {source}: the surface must be the a-b plane (a and b with no z component, as OC20 "
            f"slabs); a = {cell[0].round(3).tolist()}, b = {cell[1].round(3).tolist()}"
        )
    if cell[2, 2] <= 0:
        raise ValueError(f"slab {source}: c must point up (+z), got c = {cell[2].round(3).tolist()}")
    tags = atoms.get_tags()
    oc20_tags = {0, 1} <= set(tags.tolist()) <= {0, 1, 2}  # ASE's builders tag layers 1, 2, ... instead
    if oc20_tags and (tags == ADSORBATE_TAG).any():
        raise ValueError(f"slab {source}: it holds adsorbate atoms (tag 2); give the clean slab")
    gap = vacuum_gap(atoms)
    if gap < min_vacuum:
        raise ValueError(
            f"slab {source}: only {gap:.2f} A of vacuum along c (needs >= {min_vacuum} A, min_vacuum): "
            "is this a bulk cell? cut a slab (bulk + miller) or add vacuum"
        )
    slab = Atoms(atoms.numbers, cell=cell, pbc=True)
    frac = atoms.get_scaled_positions(wrap=True)
    order = np.sort(frac[:, 2])
    gaps = np.diff(np.concatenate([order, order[:1] + 1.0]))
    bottom = order[(int(np.argmax(gaps)) + 1) % len(order)]  # lowest atom above the vacuum gap
    frac[:, 2] = (frac[:, 2] - bottom) % 1.0 + 0.5 * gaps.max()  # slab whole, vacuum split above and below
    slab.set_scaled_positions(frac)
    if not oc20_tags:
        tags = surface_tags(slab.positions[:, 2])
    slab.set_tags(tags)
    fixed = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed[c.get_indices()] = True
    slab.set_constraint(FixAtoms(mask=fixed if fixed.any() else tags == 0))
    return slab


def load_slab(cfg: AdsorbConfig) -> tuple[Atoms, str]:
    """(the prepared slab, a description of where it came from)."""
    if cfg.slab is not None:
        return prepare_slab(read_structure(cfg.slab, "slab"), cfg.slab, cfg.min_vacuum), f"slab file {cfg.slab}"
    from sfm.data.fairchem_oc import slabs_from_bulk

    bulk = read_structure(cfg.bulk, "bulk")
    slabs = slabs_from_bulk(bulk, cfg.miller)
    if not 0 <= cfg.slab_index < len(slabs):
        raise ValueError(
            f"bulk {cfg.bulk}: miller {cfg.miller} has {len(slabs)} termination(s); "
            f"slab_index {cfg.slab_index} is out of range"
        )
    miller = "".join(str(m) for m in cfg.miller)
    return (
        prepare_slab(slabs[cfg.slab_index], f"{cfg.bulk} ({miller})", cfg.min_vacuum),
        f"{bulk.get_chemical_formula()} ({miller}) cut from {cfg.bulk}, termination {cfg.slab_index} of {len(slabs)}",
    )


def load_adsorbate(cfg: AdsorbConfig) -> Adsorbate:
    """The adsorbate (atoms, binding atom indices): an OC20 name, or a file with ``cfg.binding``."""
    from ase.data import chemical_symbols

    from sfm.data.demo import load_adsorbates
    from sfm.data.placements import oc20_adsorbate

    names = {a.smiles for a in load_adsorbates(max_atoms=sys.maxsize)}
    if cfg.adsorbate in names:
        ads = oc20_adsorbate(cfg.adsorbate)
        return Adsorbate(Atoms(ads.atoms.numbers, ads.atoms.positions), ads.smiles, ads.binding)
    if not Path(_file_part(cfg.adsorbate)).exists():
        raise ValueError(
            f"adsorbate {cfg.adsorbate!r} is neither an OC20 adsorbate nor a file; known names: "
            f"{' '.join(sorted(names))}"
        )
    atoms = read_structure(cfg.adsorbate, "adsorbate")
    unknown = sorted({int(z) for z in atoms.numbers if not 1 <= z < len(chemical_symbols)})
    if unknown:
        raise ValueError(f"adsorbate {cfg.adsorbate}: unknown element(s) Z = {unknown}")
    if cfg.binding is None:
        raise ValueError(
            f"adsorbate {cfg.adsorbate}: give binding, the index (or indices) of the atom(s) that bind to the surface"
        )
    bad = [b for b in cfg.binding if not 0 <= b < len(atoms)]
    if bad:
        raise ValueError(f"adsorbate {cfg.adsorbate}: binding indices {bad} out of range ({len(atoms)} atoms)")
    return Adsorbate(Atoms(atoms.numbers, atoms.positions), Path(cfg.adsorbate).name, tuple(cfg.binding))


def check_elements(model, path: str, numbers: np.ndarray, what: str) -> None:
    """ValueError naming the elements of ``numbers`` the checkpoint's dictionary lacks."""
    from ase.data import chemical_symbols

    from sfm.data import Dictionary

    tokens = model.checkpoint.get("dictionary")
    if not tokens:
        return
    dictionary = Dictionary(tokens, source=path)
    missing = sorted(
        {chemical_symbols[z] for z in set(numbers.tolist()) if chemical_symbols[z] not in dictionary.tokens}
    )
    if missing:
        raise ValueError(f"{what} {path} does not know element(s) {' '.join(missing)} of this slab + adsorbate")


# ---------------------------------------------------------------- placements


def _with_adsorbate(slab: Atoms, ads_numbers: np.ndarray, ads_pos: np.ndarray) -> Atoms:
    """slab + adsorbate atoms (tag 2) at ``ads_pos``, the slab's held atoms held."""
    atoms = Atoms(
        np.concatenate([slab.numbers, ads_numbers]),
        np.concatenate([slab.positions, ads_pos]),
        cell=slab.cell.array,
        pbc=True,
        tags=np.concatenate([slab.get_tags(), np.full(len(ads_numbers), 2)]),
    )
    atoms.set_constraint(FixAtoms(indices=slab.constraints[0].get_indices()))
    return atoms


def baseline_placements(slab: Atoms, adsorbate: Adsorbate, mode: str, num: int | None, seed: int) -> list[Atoms]:
    """OC20 placements (:mod:`sfm.data.placements`): ``heuristic`` (every site, or a uniform
    subset of ``num`` if not None) or ``random`` (``num`` sites), with the slab's own held atoms."""
    from sfm.data.placements import heuristic_placements, random_placements

    made = (
        heuristic_placements(slab, adsorbate, seed, num)
        if mode == "heuristic"
        else random_placements(slab, adsorbate, num, seed)
    )
    n = len(slab)
    return [_with_adsorbate(slab, p.atoms.numbers[n:], p.atoms.positions[n:]) for p in made]


def _progress(total: int, desc: str, enabled: bool, unit: str = "struct"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, mininterval=1.0, dynamic_ncols=True)


def diffusion_placements(model, templates: list[Atoms], t_start: float, cfg: AdsorbConfig, desc: str) -> list[Atoms]:
    """The adsorbate of each template inpainted by the diffusion ``model`` on the given slab:
    from noise (t_start = 1) or from the template taken as the noisy state at ``t_start``."""
    from sfm.data import collate
    from sfm.data.atoms import atoms_to_data

    out = []
    batches = -(-len(templates) // cfg.batch_size)
    bar = _progress(
        batches * cfg.sample_steps, f"{desc} ({len(templates)} in {batches} batch(es))", cfg.progress, unit="step"
    )
    try:
        for start in range(0, len(templates), cfg.batch_size):
            chunk = templates[start : start + cfg.batch_size]
            batch = collate([atoms_to_data(a) for a in chunk]).to(cfg.device)
            generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed * 100_003 + start)
            res = model.sample(
                batch,
                mode="inpaint",
                sampler=cfg.sampler,
                steps=cfg.sample_steps,
                generator=generator,
                atom_given=batch.tags != ADSORBATE_TAG,
                t_start=t_start,
                renoise=t_start >= 1.0,
                callback=lambda i, n: bar.update(1),
            )
            pos = res.pos.detach().double().cpu().numpy()
            for b, template in enumerate(chunk):
                atoms = template.copy()
                atoms.positions = pos[int(batch.ptr[b]) : int(batch.ptr[b + 1])]
                out.append(atoms)
    finally:
        bar.close()
    return out


def make_placements(slab: Atoms, adsorbate: Adsorbate, cfg: AdsorbConfig, diffusion=None) -> list[Atoms]:
    """All placements, ``info["source"]`` and ``info["index"]`` set, in the order of ``SOURCES``."""
    made: dict[str, list[Atoms]] = {}
    if cfg.heuristic:
        made["heuristic"] = baseline_placements(slab, adsorbate, "heuristic", cfg.max_heuristic, cfg.seed)
    if cfg.random:
        made["random"] = baseline_placements(slab, adsorbate, "random", cfg.random, cfg.seed)
    if cfg.num_generated:
        # the template's adsorbate position is never read (inpainting from noise regenerates it)
        mol = adsorbate.atoms
        top = slab.positions[:, 2].max()
        centre = 0.5 * (slab.cell[0] + slab.cell[1])
        template = _with_adsorbate(
            slab, mol.numbers, mol.positions - mol.positions.mean(0) + [centre[0], centre[1], top + 2.5]
        )
        made["generated"] = diffusion_placements(diffusion, [template] * cfg.num_generated, 1.0, cfg, "generate")
    if cfg.t_start < 1.0:
        made["refined"] = diffusion_placements(diffusion, made["heuristic"], cfg.t_start, cfg, "refine heuristic")
    out = []
    for source in SOURCES:
        for atoms in made.get(source, []):
            atoms.info = {"source": source, "index": len(out)}
            out.append(atoms)
    return out


# ---------------------------------------------------------------- relaxation


class Relaxer:
    """Relaxes lists of Atoms with an sfm S2EF checkpoint (batched; with ``loop=True`` the ASE
    loop over its ``SFMCalculator`` instead, for comparison) or an ASE calculator factory
    ``module:factory`` (ASE loop); ``referenced`` says what its energies are by default."""

    def __init__(self, spec: str, cfg: AdsorbConfig, loop: bool = False):
        self.spec, self.cfg = spec, cfg
        self.sfm = ":" not in spec
        self.batched = self.sfm and not loop
        opt = cfg.optimizer.upper()
        if self.sfm:
            from sfm import load_checkpoint
            from sfm.relax.calculator import SFMCalculator

            self.model = load_checkpoint(spec, map_location=cfg.device)
            task = self.model.checkpoint.get("task", "s2ef")
            if task != "s2ef" or not hasattr(self.model, "predict"):
                raise ValueError(f"relaxer {spec} holds a {task} model, not an S2EF (energy/force) model")
            self.factory = lambda: SFMCalculator(self.model, device=cfg.device)
            self.name = f"sfm S2EF checkpoint {spec} ({f'batched {opt}' if self.batched else f'ASE {opt} loop'})"
        else:
            module, _, attr = spec.partition(":")
            try:
                self.factory = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise ValueError(f"relaxer {spec}: cannot import {attr} from {module} ({err})") from None
            if not callable(self.factory):
                raise ValueError(f"relaxer {spec}: {attr} is not callable (a calculator class or factory)")
            self.name = f"ASE calculator {spec} (ASE {opt} loop)"

    @property
    def referenced(self) -> bool:
        return self.sfm

    def check_elements(self, numbers: np.ndarray) -> None:
        if self.sfm:
            check_elements(self.model, self.spec, numbers, "relaxer")

    def relax(self, structures: list[Atoms], desc: str, steps: int | None = None) -> list[Atoms]:
        """Relaxed copies, each with a SinglePointCalculator (energy eV, forces eV/A, raw on held
        atoms) and ``info`` converged, steps, fmax (free atoms), relax_wall_s (its share); at
        most ``steps`` optimiser steps (default ``cfg.steps``)."""
        steps = self.cfg.steps if steps is None else steps
        start = time.perf_counter()
        out = self._batched(structures, desc, steps) if self.batched else self._loop(structures, desc, steps)
        share = (time.perf_counter() - start) / max(len(structures), 1)
        for a in out:
            a.info["relax_wall_s"] = share
        return out

    def _batched(self, structures: list[Atoms], desc: str, steps: int) -> list[Atoms]:
        from sfm.data import collate
        from sfm.data.atoms import atoms_to_data
        from sfm.relax import relax_batch

        cfg, out = self.cfg, []
        dtype = next(self.model.parameters()).dtype
        bar = _progress(len(structures), desc, cfg.progress)
        try:
            for start in range(0, len(structures), cfg.batch_size):
                chunk = structures[start : start + cfg.batch_size]
                batch = collate([atoms_to_data(a, dtype=dtype) for a in chunk]).to(cfg.device)

                def show(frame):
                    if frame.step % 10 == 0:
                        bar.set_postfix(step=frame.step, relaxing=len(frame.index), refresh=False)

                res = relax_batch(
                    self.model, batch, cfg.optimizer, cfg.fmax, steps, callback=show, max_atoms=cfg.max_atoms
                )
                ptr = batch.ptr.tolist()
                for b, atoms in enumerate(chunk):
                    sl = slice(ptr[b], ptr[b + 1])
                    out.append(
                        _relaxed(
                            atoms,
                            res.pos[sl].detach().double().cpu().numpy(),
                            float(res.energy[b]),
                            res.forces[sl].detach().double().cpu().numpy(),
                            bool(res.converged[b]),
                            int(res.steps[b]),
                            float(res.fmax[b]),
                        )
                    )
                bar.update(len(chunk))
        finally:
            bar.close()
        return out

    def _loop(self, structures: list[Atoms], desc: str, steps: int) -> list[Atoms]:
        from ase.optimize import FIRE, LBFGS

        opt_class = FIRE if self.cfg.optimizer == "fire" else LBFGS
        out = []
        bar = _progress(len(structures), desc, self.cfg.progress)
        try:
            for atoms in structures:
                work = atoms.copy()
                work.calc = self.factory()
                try:
                    opt = opt_class(work, logfile=None)
                    converged = bool(opt.run(fmax=self.cfg.fmax, steps=steps))
                    energy = work.get_potential_energy()
                    forces = work.get_forces(apply_constraint=False)
                except Exception as err:  # any calculator's failure, named with the structure
                    raise RuntimeError(
                        f"relaxer {self.spec} failed on {atoms.get_chemical_formula()} "
                        f"({atoms.info.get('source', 'structure')} {atoms.info.get('index', '')}): "
                        f"{type(err).__name__}: {err}"
                    ) from err
                free = ~_fixed(atoms)
                fmax = float(np.linalg.norm(forces[free], axis=1).max()) if free.any() else 0.0
                out.append(_relaxed(atoms, work.positions, energy, forces, converged, int(opt.nsteps), fmax))
                bar.update(1)
        finally:
            bar.close()
        return out


def _fixed(atoms: Atoms) -> np.ndarray:
    mask = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[c.get_indices()] = True
    return mask


def _relaxed(atoms: Atoms, pos, energy: float, forces, converged: bool, steps: int, fmax: float) -> Atoms:
    from ase.calculators.singlepoint import SinglePointCalculator

    out = atoms.copy()
    out.positions = pos
    out.info.update(converged=converged, steps=steps, fmax=fmax)
    out.calc = SinglePointCalculator(out, energy=energy, forces=forces)
    return out


def gas_molecules() -> list[Atoms]:
    """H2, H2O, CO, N2 (ase.build.molecule) centred in a periodic ``BOX`` A cube."""
    from ase.build import molecule

    out = []
    for name in GAS_MOLECULES:
        mol = molecule(name, cell=[BOX] * 3, pbc=True)
        mol.center()
        mol.set_tags(np.ones(len(mol), dtype=int))
        mol.info = {"molecule": name}
        out.append(mol)
    return out


def gas_references(energies: dict[str, float]) -> dict[str, float]:
    """Per-element references (eV) from molecule energies, OC20's scheme (module doc)."""
    o = energies["H2O"] - energies["H2"]
    return {"H": energies["H2"] / 2, "O": o, "C": energies["CO"] - o, "N": energies["N2"] / 2}


# ---------------------------------------------------------------- the search


class WorkDir:
    """``out/work``: run.json (defining settings), placements.extxyz, relaxed chunks
    ``chunk_NNNN.extxyz``, references.json and clean_slab.extxyz. Files are written whole
    (temporary name, then renamed), so an interrupted run leaves only complete ones. Other
    settings are refused once placements exist (a run that failed before them blocks nothing)."""

    def __init__(self, out: Path, cfg: AdsorbConfig):
        self.path = out / "work"
        run = self.path / "run.json"
        now = cfg.defining()
        if run.exists() and (self.path / "placements.extxyz").exists():
            before = json.loads(run.read_text())
            diff = {k: (before.get(k), now[k]) for k in now if before.get(k) != now[k]}
            if diff:
                lines = ", ".join(f"{k}: {a!r} before, {b!r} now" for k, (a, b) in diff.items())
                raise ValueError(
                    f"{out} holds a search with other settings ({lines}); rerun with the same "
                    "settings to resume, or use another out"
                )
        self.path.mkdir(parents=True, exist_ok=True)
        _write_text(run, json.dumps(now, indent=1) + "\n")

    def read(self, name: str) -> list[Atoms] | None:
        import ase.io

        path = self.path / name
        return ase.io.read(path, ":", format="extxyz") if path.exists() else None

    def write(self, name: str, structures: list[Atoms]) -> None:
        write_extxyz(self.path / name, structures)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_extxyz(path: Path, structures: list[Atoms]) -> None:
    """extxyz written whole (temporary file renamed): energies, forces and info included."""
    import ase.io

    tmp = path.with_name(path.name + ".tmp")
    ase.io.write(tmp, structures, format="extxyz")
    os.replace(tmp, path)


def relax_resumable(relaxer: Relaxer, structures: list[Atoms], work: WorkDir, cfg: AdsorbConfig) -> list[Atoms]:
    """Relax ``structures`` in chunks of ``batch_size``, each chunk saved as it finishes; chunks
    already in ``work`` are read back instead of redone."""
    out = []
    chunks = range(0, len(structures), cfg.batch_size)
    for n, start in enumerate(chunks):
        name = f"chunk_{n:04d}.extxyz"
        done = work.read(name)
        if done is None:
            chunk = structures[start : start + cfg.batch_size]
            desc = f"relax {start + 1}-{start + len(chunk)} of {len(structures)}"
            done = relaxer.relax(chunk, desc)
            work.write(name, done)
        out.extend(done)
    return out


def references(relaxer: Relaxer, slab: Atoms, work: WorkDir, prefix: str = "") -> dict:
    """Total-energy references with the relaxer (cached in work as ``{prefix}references.json``
    and ``{prefix}clean_slab.extxyz``): clean slab and gas molecules."""
    path = work.path / f"{prefix}references.json"
    if path.exists() and work.read(f"{prefix}clean_slab.extxyz") is not None:
        return json.loads(path.read_text())
    relaxed = relaxer.relax(
        [slab, *gas_molecules()],
        f"relax clean slab + gas references {prefix.strip('_')}",
        steps=max(relaxer.cfg.steps, REFERENCE_STEPS),
    )
    work.write(f"{prefix}clean_slab.extxyz", relaxed[:1])
    molecules = {a.info["molecule"]: float(a.get_potential_energy()) for a in relaxed[1:]}
    refs = {
        "slab_energy": float(relaxed[0].get_potential_energy()),
        "molecules": molecules,
        "elements": gas_references(molecules),
        "not_converged": [a.info.get("molecule", "clean slab") for a in relaxed if not a.info["converged"]],
    }
    _write_text(path, json.dumps(refs, indent=1) + "\n")
    return refs


def judge_rows(
    cfg: AdsorbConfig, rows: list[dict], relaxed: list[Atoms], slab: Atoms, adsorbate: Atoms, work: WorkDir
) -> str:
    """AdsorbML's ML+SP: a single point of ``cfg.judge`` on the ``top_k`` best relaxed placements;
    sets ``judge_energy`` and ``judge_adsorption_energy`` on every row (None where not judged) and
    returns the judge's description. A calculator judge's adsorption energy uses its own relaxed
    clean slab and gas references; an sfm checkpoint's energy is one already."""
    judge = Relaxer(cfg.judge, cfg, loop=True)
    judge.check_elements(np.concatenate([slab.numbers, adsorbate.numbers]))
    refs = None if judge.referenced else references(judge, slab, work, prefix="judge_")
    for r in rows:
        r["judge_energy"] = r["judge_adsorption_energy"] = None
    ranked = sorted((r for r in rows if r["rank"] is not None), key=lambda r: r["rank"])[: cfg.top_k]
    for r in ranked:
        atoms = relaxed[r["index"]].copy()
        atoms.calc = judge.factory()
        r["judge_energy"] = float(atoms.get_potential_energy())
        r["judge_adsorption_energy"] = (
            r["judge_energy"]
            if refs is None
            else r["judge_energy"]
            - refs["slab_energy"]
            - float(sum(refs["elements"][s] for s in adsorbate.get_chemical_symbols()))
        )
    kind = "adsorption energies" if refs is None else "total energies, referenced with its own slab and gas"
    return f"{judge.spec}: single point on the {len(ranked)} best relaxed placements ({kind})"


def run_adsorb(cfg: AdsorbConfig) -> AdsorbResult:
    """The whole search (module doc); returns the table and the best structures."""
    check_config(cfg)
    out = Path(cfg.out)
    slab, slab_desc = load_slab(cfg)
    adsorbate = load_adsorbate(cfg)
    numbers = np.concatenate([slab.numbers, adsorbate.atoms.numbers])
    relaxer = Relaxer(cfg.relaxer, cfg)
    relaxer.check_elements(numbers)
    energy_mode = cfg.energy if cfg.energy != "auto" else ("referenced" if relaxer.referenced else "total")
    if energy_mode == "total":
        missing = sorted(set(adsorbate.atoms.get_chemical_symbols()) - {"H", "C", "N", "O"})
        if missing:
            raise ValueError(
                f"adsorbate {cfg.adsorbate}: total energies need gas references, which exist for "
                f"H, C, N, O only (OC20's scheme), not {' '.join(missing)}"
            )
    work = WorkDir(out, cfg)
    start = time.perf_counter()

    placements = work.read("placements.extxyz")
    if placements is None:
        diffusion = None
        if cfg.diffusion is not None:
            from sfm.pipeline.sampling import load_model

            diffusion = load_model(cfg.diffusion, torch.device(cfg.device))
            check_elements(diffusion, cfg.diffusion, numbers, "diffusion checkpoint")
        placements = make_placements(slab, adsorbate, cfg, diffusion)
        work.write("placements.extxyz", placements)
    relaxed = relax_resumable(relaxer, placements, work, cfg)
    refs = references(relaxer, slab, work) if energy_mode == "total" else None
    clean = work.read("clean_slab.extxyz")[0] if refs is not None else None

    rows = table(placements, relaxed, slab, adsorbate.atoms, refs, clean)
    judged = judge_rows(cfg, rows, relaxed, slab, adsorbate.atoms, work) if cfg.judge else None
    ranked = sorted((r for r in rows if r["rank"] is not None), key=lambda r: r["rank"])
    best = [relaxed[r["index"]] for r in ranked]
    summary = {
        "slab": slab_desc,
        "slab_atoms": len(slab),
        "adsorbate": cfg.adsorbate,
        "adsorbate_formula": adsorbate.atoms.get_chemical_formula(),
        "binding": list(adsorbate.binding),
        "relaxer": relaxer.name,
        "energy": energy_mode,
        "energy_note": (
            "the relaxer's energies are adsorption energies (OC20-referenced model)"
            if energy_mode == "referenced"
            else "E_ads = E - E_slab - gas references (H2, H2O-H2, CO-O, N2), all with the relaxer"
        ),
        "references": refs,
        "placements": len(rows),
        "by_source": by_source(rows),
        "best": ranked[0] if ranked else None,
        "judge": judged,
        "judge_best": min(
            (r for r in ranked if r.get("judge_adsorption_energy") is not None),
            key=lambda r: r["judge_adsorption_energy"],
            default=None,
        ),
        "wall_s_this_run": round(time.perf_counter() - start, 2),
    }
    from sfm.pipeline.adsorb_report import write_outputs

    write_outputs(out, cfg, rows, summary, relaxed, best)
    return AdsorbResult(rows, summary, best, out)


def table(
    placements: list[Atoms], relaxed: list[Atoms], slab: Atoms, adsorbate: Atoms, refs: dict | None, clean: Atoms | None
) -> list[dict]:
    """One row per placement (module doc), ranks set."""
    reference = np.concatenate([slab.positions, adsorbate.positions])  # bonds are minimum-image: any offset
    rows = []
    for init, final in zip(placements, relaxed):
        flags = detect(
            final.numbers,
            final.get_tags(),
            reference,
            final.positions,
            final.cell.array,
            None if clean is None else clean.positions,
        )
        energy = float(final.get_potential_energy())
        if refs is None:
            e_ads = energy
        else:
            e_ads = (
                energy - refs["slab_energy"] - float(sum(refs["elements"][s] for s in adsorbate.get_chemical_symbols()))
            )
        rows.append(
            {
                "index": int(init.info["index"]),
                "source": init.info["source"],
                "energy": energy,
                "adsorption_energy": e_ads,
                "converged": bool(final.info["converged"]),
                "steps": int(final.info["steps"]),
                "fmax": float(final.info["fmax"]),
                "anomalies": ";".join(flags.labels()),
                **flags.as_dict(),
                "valid": not flags.any,
                "rank": None,
            }
        )
    valid = sorted((r for r in rows if r["valid"]), key=lambda r: (r["adsorption_energy"], r["index"]))
    for rank, r in enumerate(valid):
        r["rank"] = rank
    return rows


def by_source(rows: list[dict]) -> dict:
    """Per source: placements, valid, anomaly counts, best and median valid adsorption energy."""
    out = {}
    for source in SOURCES:
        mine = [r for r in rows if r["source"] == source]
        if not mine:
            continue
        e = [r["adsorption_energy"] for r in mine if r["valid"]]
        out[source] = {
            "placements": len(mine),
            "valid": len(e),
            **{k: sum(r[k] for r in mine) for k in KINDS},
            "converged": sum(r["converged"] for r in mine),
            "best": min(e) if e else math.nan,
            "median": float(np.median(e)) if e else math.nan,
            "best_rank": min((r["rank"] for r in mine if r["valid"]), default=None),
        }
    return out
