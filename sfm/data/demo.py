"""The demo world: a small OC20-format dataset built locally with ASE and EMT.

``python -m sfm.data.demo --out DIR [--small] [--seed S] [--num_systems N] [--workers K] [--force] [--dense ...]``

``--dense`` also builds ``DIR/is2re_dense``, many relaxed placements per held-out system and their
minimum (OC20-Dense style; :mod:`sfm.data.dense`).

Every system is an adsorbate on a metal slab, made and relaxed like an OC20 system, but
with ASE's EMT potential instead of DFT. EMT's H/C/N/O parameters are not physical: this
is a consistent, learnable world with exact energies and forces, not chemistry.

Catalysts
    fcc slabs (ase.build ``fcc111``, ``fcc100``, ``fcc110``, ``fcc211``) of the EMT
    metals Al, Cu, Ag, Au, Ni, Pd, Pt, or binary alloys of two of them (a random 20-50%
    of the slab sites substituted by the second metal, lattice constant by Vegard's law
    from the EMT equilibrium lattice constants). Surface cells of 2-4 x 3-4 atoms
    (a, b about 6-11 A) and 4-6 layers: 36-64 metal atoms; 10-13 A of vacuum on each
    side (cell c about 25-36 A). Stored with all three directions periodic, as OC20 does.
    Tags: the upper half of the distinct atomic heights (z levels) is the surface
    (tag 1), the lower half the subsurface (tag 0, fixed); adsorbate atoms are tag 2.
    ``fixed = tags == 0``.
Adsorbates
    The OC20 list (``adsorbates.pkl`` of ``fairchem-data-oc``) restricted to entries with
    at most 6 atoms. Placed on a top, bridge or hollow site of the top layer (from a
    periodic Delaunay triangulation of the top-layer atoms), binding atom(s) down and the
    rest pointing up, randomly rotated about z, lowered rigidly until a binding atom is
    1.8-2.2 A (drawn per system) or another adsorbate atom 2.5 A from a metal atom,
    whichever comes first. ``pos`` is this initial placement.
Relaxation
    ASE LBFGS (maxstep 0.2 A) with EMT to fmax 0.05 eV/A (free atoms) within 300 steps,
    subsurface fixed (``FixAtoms``: fixed atoms are identical in ``pos`` and
    ``pos_relaxed``). A system is rejected and redrawn (with the next attempt's seed) if
    the relaxation does not converge, part of the adsorbate desorbs (is not linked to
    the slab by bonds shorter than 1.5x the sum of covalent radii), an adsorbate atom
    sinks below the mean height of the surface (tag 1) atoms, or a slab atom moves more
    than 1 A. Adsorbates that break apart on the surface are kept: EMT stretches X-H
    bonds on metals to 1.6-1.9 A, so most adsorbates are not intact by 1.25x covalent
    radii; ``intact`` in ``data_mapping.json`` and the summary say how many.
Energies (eV)
    ``E(x)`` = ASE EMT potential energy of structure x (the stored cell, all pbc True).
    ``E_slab`` = E of the clean slab (the same metal atoms, same cell, no adsorbate)
    relaxed from the bulk-terminated geometry with the same settings.
    ``E_gas`` = sum over adsorbate atoms of per-element gas references from
    EMT-relaxed molecules (OC20's scheme): H = E(H2)/2, O = E(H2O) - E(H2),
    C = E(CO) - O, N = E(N2)/2 (see :func:`gas_references`).
    IS2RE ``y_init = E(pos) - E_slab - E_gas`` and ``y_relaxed = E(pos_relaxed) -
    E_slab - E_gas``; S2EF ``y = E(frame) - E_slab - E_gas``, referenced exactly like
    ``y_relaxed`` (OC20's S2EF convention), so a frame's ``y`` minus ``y_relaxed`` of the
    same ``sid`` is a plain EMT energy difference. ``force`` [K,3] eV/A is minus the
    EMT gradient on every atom, fixed atoms included (not zeroed by the constraint).
Splits (OC20 layout; ``--num_systems`` N train systems, each other IS2RE split
min(max(N // 4, 2), 100) systems)
    ``is2re/{train,val_id,test_id,val_ood_ads,val_ood_cat}/data.lmdb``: train, val_id
    and test_id use in-distribution catalysts and adsorbates; ``val_ood_ads`` uses the
    held-out adsorbates (:data:`HELD_OUT_ADSORBATES`) on in-distribution catalysts;
    ``val_ood_cat`` uses held-out catalysts (anything containing Pd, and the Au-Cu alloy)
    with in-distribution adsorbates. Held-out adsorbates and catalysts never appear in
    train/val_id/test_id.
    ``s2ef/{train,val_id}/data.lmdb``: every ``frame_every``-th step of the train and
    val_id relaxation trajectories, plus the final (relaxed) frame.
Entries
    IS2RE: ``sid`` (int, unique over all splits), ``atomic_numbers`` [K] long, ``pos``
    [K,3], ``cell`` [1,3,3], ``natoms``, ``tags`` [K] long, ``fixed`` [K] bool,
    ``y_init``, ``y_relaxed``, ``pos_relaxed`` [K,3]. S2EF: ``sid``, ``fid`` (optimizer
    step), ``atomic_numbers``, ``pos``, ``cell``, ``natoms``, ``tags``, ``fixed``, ``y``,
    ``force``. Positions float32 Cartesian A, each structure wrapped into the cell on
    its own (as OC20's are): an atom that crossed a cell face during relaxation is a
    lattice vector away in ``pos_relaxed - pos``; use the minimum image for displacements.
    ``data_mapping.json`` maps each sid to its split, catalyst, facet, adsorbate SMILES,
    site, relaxation steps, attempt and ``intact``; ``summary.json`` holds the counts and
    statistics.

Determinism: system ``i`` of split ``s`` draws everything from
``SeedSequence([seed, s, i, attempt])``, so the output does not depend on ``--workers``.
The dataset is built in a temporary folder renamed onto ``--out`` when complete; an
existing complete ``--out`` built with the same settings is reused unless ``--force``.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import importlib.util
import json
import os
import pickle
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, fcc100, fcc110, fcc111, fcc211
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.data import covalent_radii
from scipy.optimize import minimize_scalar
from scipy.sparse.csgraph import connected_components
from scipy.spatial import Delaunay
from torch_geometric.data import Data

from sfm.data.emt_world import gas_references, relax
from sfm.data.lattice import as_cell
from sfm.data.lmdb_dataset import LmdbWriter
from sfm.data.parallel import ordered_map

METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
HELD_OUT_METAL = "Pd"
HELD_OUT_ALLOY = ("Au", "Cu")
HELD_OUT_ADSORBATES = ("*NH2", "*CHOH", "*OCH3", "*CCH2", "*NONH", "*COOH", "*N*NO", "*CH2*O")
MAX_ADSORBATE_ATOMS = 6
# (builder, surface sizes (nx, ny, layers)); 110 layers are thin, so it gets more of them
FACETS = {
    "111": (fcc111, [(3, 3, 4), (4, 3, 4), (4, 4, 4)]),
    "100": (fcc100, [(3, 3, 4), (4, 3, 4), (4, 4, 4)]),
    "110": (fcc110, [(2, 3, 6), (2, 4, 6), (3, 3, 6)]),
    "211": (fcc211, [(3, 3, 4), (3, 4, 4)]),
}
SPLITS = ("train", "val_id", "test_id", "val_ood_ads", "val_ood_cat")
S2EF_SPLITS = ("train", "val_id")
SIZES = {"small": 24, "default": 1400}  # IS2RE train systems
MAX_ATTEMPTS = 20
VERSION = 2  # bump when the output changes: an --out built by another version is not reused


@dataclass(frozen=True)
class Adsorbate:
    """One OC20 adsorbate: gas-phase geometry (A), SMILES-like name, binding atom indices."""

    atoms: Atoms
    smiles: str
    binding: tuple[int, ...]


@dataclass(frozen=True)
class Task:
    """One system to build: ``index`` within ``split``, the global ``seed``, and the S2EF
    frame stride ``frame_every`` (optimizer steps)."""

    split: str
    index: int
    seed: int
    frame_every: int


class Rejected(Exception):
    """A drawn system failed a sanity check; the message says which."""


# ---------------------------------------------------------------- references


def adsorbates_path() -> Path:
    """Path of ``adsorbates.pkl`` shipped by ``fairchem-data-oc`` (no fairchem import)."""
    spec = importlib.util.find_spec("fairchem")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("fairchem-data-oc is not installed (it ships adsorbates.pkl)")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "oc" / "databases" / "pkls" / "adsorbates.pkl"
        if path.is_file():
            return path
    raise FileNotFoundError(f"adsorbates.pkl not found under {list(spec.submodule_search_locations)}")


@functools.lru_cache(maxsize=None)
def load_adsorbates(max_atoms: int = MAX_ADSORBATE_ATOMS) -> tuple[Adsorbate, ...]:
    """The OC20 adsorbates with at most ``max_atoms`` atoms, in the file's order."""
    with open(adsorbates_path(), "rb") as f:
        table = pickle.load(f)
    out = []
    for key in sorted(table):
        atoms, smiles, binding = table[key][:3]
        if len(atoms) <= max_atoms:
            out.append(Adsorbate(atoms, smiles, tuple(int(b) for b in np.atleast_1d(binding))))
    missing = set(HELD_OUT_ADSORBATES) - {a.smiles for a in out}
    if missing:
        raise ValueError(f"held-out adsorbates {sorted(missing)} not in {adsorbates_path()}")
    return tuple(out)


@functools.lru_cache(maxsize=None)
def emt_lattice_constant(metal: str) -> float:
    """EMT equilibrium fcc lattice constant of ``metal`` (A), from a 1-D minimisation."""

    def energy(a):
        atoms = bulk(metal, "fcc", a=a)
        atoms.calc = EMT()
        return atoms.get_potential_energy()

    return float(minimize_scalar(energy, bounds=(3.0, 4.6), method="bounded", options={"xatol": 1e-6}).x)


# ---------------------------------------------------------------- catalysts


def catalysts() -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(in-distribution, held-out) catalysts: 1-tuples are metals, 2-tuples alloys (A, B)."""
    all_cats = [(m,) for m in METALS] + [(a, b) for i, a in enumerate(METALS) for b in METALS[i + 1 :]]
    held = [c for c in all_cats if HELD_OUT_METAL in c or sorted(c) == sorted(HELD_OUT_ALLOY)]
    return [c for c in all_cats if c not in held], held


def catalyst_name(cat: tuple[str, ...]) -> str:
    """``("Au", "Cu")`` -> ``"AuCu"``; ``("Pt",)`` -> ``"Pt"``."""
    return "".join(sorted(cat))


def build_slab(rng: np.random.Generator, cat: tuple[str, ...]) -> tuple[Atoms, str]:
    """A bulk-terminated slab of catalyst ``cat`` with tags and the subsurface fixed.

    Returns (slab, facet). Alloys: a random 20-50% of the sites get the second metal and
    the lattice constant is the composition-weighted mean of the EMT lattice constants.
    """
    facet = str(rng.choice(list(FACETS)))
    builder, sizes = FACETS[facet]
    size = sizes[rng.integers(len(sizes))]
    natoms = size[0] * size[1] * size[2]
    symbols = np.array([cat[0]] * natoms)
    if len(cat) == 2:
        sub = rng.choice(natoms, size=int(round(rng.uniform(0.2, 0.5) * natoms)), replace=False)
        symbols[sub] = cat[1]
    a = float(np.mean([emt_lattice_constant(s) for s in symbols]))
    slab = builder(cat[0], size=size, a=a, vacuum=rng.uniform(10.0, 13.0))
    slab.set_chemical_symbols(symbols)
    slab.set_tags(surface_tags(slab.positions[:, 2]))
    slab.pbc = True
    slab.set_constraint(FixAtoms(mask=slab.get_tags() == 0))
    return slab, facet


def surface_tags(z: np.ndarray, tol: float = 0.05) -> np.ndarray:
    """Tag 1 for atoms in the upper half of the distinct heights ``z`` (A), else 0."""
    levels = np.unique(np.round(z / tol).astype(int))
    cut = levels[len(levels) // 2] * tol
    return (z >= cut - tol).astype(np.int64)


def surface_sites(slab: Atoms, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A random top/bridge/hollow site (xy in A, and its kind) of the top layer.

    The top layer is the atoms within 0.7 A of the highest one; bridges and hollows are
    edge midpoints and triangle centroids of its periodic Delaunay triangulation.
    """
    z = slab.positions[:, 2]
    top = slab.positions[z > z.max() - 0.7, :2]
    kind = str(rng.choice(["top", "bridge", "hollow"]))
    if kind == "top":
        return top[rng.integers(len(top))], kind
    ab = slab.cell.array[:2, :2]
    points = np.concatenate([top + i * ab[0] + j * ab[1] for i in (-1, 0, 1) for j in (-1, 0, 1)])
    simplices = Delaunay(points).simplices
    if kind == "hollow":
        cand = points[simplices].mean(axis=1)
    else:
        edges = np.concatenate([simplices[:, [0, 1]], simplices[:, [1, 2]], simplices[:, [0, 2]]])
        cand = points[edges].mean(axis=1)
    frac = np.linalg.solve(ab.T, cand.T).T
    cand = cand[np.all((frac >= 0) & (frac < 1), axis=1)]
    return cand[rng.integers(len(cand))], kind


# ---------------------------------------------------------------- placement


def orient_adsorbate(ads: Adsorbate, rng: np.random.Generator) -> Atoms:
    """A copy of ``ads`` with the binding atoms' centroid at the origin, the rest pointing
    up (+z), randomly rotated about z."""
    atoms = ads.atoms.copy()
    binding = list(ads.binding)
    atoms.positions -= atoms.positions[binding].mean(axis=0)
    rest = np.delete(atoms.positions, binding, axis=0)
    if len(rest) and np.linalg.norm(rest.mean(axis=0)) > 1e-3:
        atoms.rotate(rest.mean(axis=0), "z")
    elif len(binding) > 1:  # only binding atoms (e.g. *C*C): lay the bond flat
        atoms.rotate(atoms.positions[binding[1]] - atoms.positions[binding[0]], "x")
    atoms.rotate(rng.uniform(0.0, 360.0), "z")
    return atoms


def contact_height(slab: Atoms, points: np.ndarray, contact: np.ndarray) -> float:
    """Largest z shift (A) at which one of ``points`` [M,3] first comes within
    ``contact`` [M] A of a slab atom when lowered rigidly from far above (with the
    lateral periodic images of the slab)."""
    ab = slab.cell.array[:2]
    images = np.concatenate([slab.positions + i * ab[0] + j * ab[1] for i in (-1, 0, 1) for j in (-1, 0, 1)])
    rxy = np.linalg.norm(points[:, None, :2] - images[None, :, :2], axis=-1)  # [M, S]
    reach = contact[:, None] ** 2 - rxy**2
    heights = images[None, :, 2] - points[:, None, 2] + np.sqrt(np.clip(reach, 0.0, None))
    heights = np.where(reach > 0, heights, -np.inf)
    if not np.isfinite(heights).any():
        raise Rejected("site has no slab atom within contact distance")
    return float(heights.max())


def place_adsorbate(slab: Atoms, ads: Adsorbate, site_xy: np.ndarray, rng: np.random.Generator) -> Atoms:
    """Slab + adsorbate: binding atoms centred over ``site_xy``, lowered until a binding
    atom is 1.8-2.2 A (drawn) or another atom 2.5 A from a metal atom, whichever first."""
    mol = orient_adsorbate(ads, rng)
    mol.positions[:, :2] += site_xy
    contact = np.full(len(mol), 2.5)
    contact[list(ads.binding)] = rng.uniform(1.8, 2.2)
    mol.positions[:, 2] += contact_height(slab, mol.positions, contact)
    system = slab.copy()
    system.extend(Atoms(mol.get_chemical_symbols(), mol.positions, tags=[2] * len(mol)))
    system.set_constraint(FixAtoms(mask=system.get_tags() == 0))
    system.wrap()
    return system


# ---------------------------------------------------------------- relaxation


def check_relaxed(initial: Atoms, final: Atoms) -> bool:
    """Raise :class:`Rejected` unless every adsorbate atom is bound to the slab, above the
    surface, and the slab moved less than 1 A; return whether the adsorbate stayed intact.

    Bonds: d < m x (sum of covalent radii), with m = 1.5 for "bound" (through any chain
    of bonds) and m = 1.25 for "intact". EMT stretches X-H bonds on metals to 1.6-1.9 A,
    so many adsorbates are not intact by the second measure; that is EMT's world and is
    kept (counted in the summary), like OC20 keeps its dissociated systems.
    """
    ads = final.get_tags() == 2
    linked = connected_components(bond_graph(final, 1.5))[1]
    if set(linked[ads]) - set(linked[~ads]):
        raise Rejected("desorbed")
    surface_z = final.positions[final.get_tags() == 1, 2].mean()
    if final.positions[ads, 2].min() < surface_z:
        raise Rejected("sank into the surface")
    moved = final.positions[~ads] - initial.positions[~ads]
    moved -= np.round(np.linalg.solve(final.cell.array.T, moved.T).T) @ final.cell.array
    if np.linalg.norm(moved, axis=1).max() > 1.0:
        raise Rejected("surface changed")
    n_before = connected_components(bond_graph(initial[ads], 1.25))[0]
    return connected_components(bond_graph(final[ads], 1.25))[0] == n_before


def bond_graph(atoms: Atoms, mult: float) -> np.ndarray:
    """Adjacency [K,K] bool: minimum-image d < ``mult`` x (sum of covalent radii), no self."""
    radii = covalent_radii[atoms.numbers]
    bonded = atoms.get_all_distances(mic=True) < mult * (radii[:, None] + radii[None, :])
    np.fill_diagonal(bonded, False)
    return bonded


# ---------------------------------------------------------------- systems


def draw_system(task: Task, attempt: int) -> dict:
    """Build, relax and check one system; raise :class:`Rejected` if it fails a check."""
    split_code = SPLITS.index(task.split)
    rng = np.random.default_rng(np.random.SeedSequence([task.seed, split_code, task.index, attempt]))
    in_cats, held_cats = catalysts()
    cats = held_cats if task.split == "val_ood_cat" else in_cats
    cat = cats[rng.integers(len(cats))]
    pool = [a for a in load_adsorbates() if (a.smiles in HELD_OUT_ADSORBATES) == (task.split == "val_ood_ads")]
    ads = pool[rng.integers(len(pool))]

    slab, facet = build_slab(rng, cat)
    site_xy, site = surface_sites(slab, rng)
    system = place_adsorbate(slab, ads, site_xy, rng)
    initial = system.copy()

    clean = relax(slab)
    if not clean.converged:
        raise Rejected("clean slab did not converge")
    traj = relax(system)
    if not traj.converged:
        raise Rejected("not converged")
    if np.min(system.get_all_distances(mic=True)[np.triu_indices(len(system), 1)]) < 0.6:
        raise Rejected("atoms too close")
    intact = check_relaxed(initial, system)
    system.wrap()

    gas = gas_references()
    reference = clean.energies[-1] + sum(gas[s] for s in ads.atoms.get_chemical_symbols())
    keep = sorted(set(range(0, len(traj.energies), task.frame_every)) | {len(traj.energies) - 1})
    frames = [
        dict(
            fid=t, pos=_wrapped(system, traj.positions[t]), y=float(traj.energies[t] - reference), force=traj.forces[t]
        )
        for t in keep
    ]
    return dict(
        atomic_numbers=system.numbers.copy(),
        cell=system.cell.array.copy(),
        tags=system.get_tags().copy(),
        pos=initial.positions.copy(),
        pos_relaxed=system.positions.copy(),
        y_init=float(traj.energies[0] - reference),
        y_relaxed=float(traj.energies[-1] - reference),
        frames=frames,
        meta=dict(
            split=task.split,
            catalyst=catalyst_name(cat),
            facet=facet,
            adsorbate=ads.smiles,
            site=site,
            steps=len(traj.energies) - 1,
            attempt=attempt,
            intact=intact,
        ),
    )


def _wrapped(atoms: Atoms, positions: np.ndarray) -> np.ndarray:
    """``positions`` [K,3] wrapped into the cell of ``atoms``."""
    tmp = atoms.copy()
    tmp.positions = positions
    tmp.wrap()
    return tmp.positions


def make_system(task: Task) -> dict:
    """System ``task`` from the first attempt that passes every check; adds the reasons
    of the rejected attempts under ``"rejected"`` and the CPU time spent under
    ``"cpu_seconds"``."""
    start = time.process_time()
    rejected = []
    for attempt in range(MAX_ATTEMPTS):
        try:
            system = draw_system(task, attempt)
        except Rejected as why:
            rejected.append(str(why))
            continue
        system["rejected"] = rejected
        system["cpu_seconds"] = time.process_time() - start
        return system
    raise RuntimeError(f"{task}: no acceptable system in {MAX_ATTEMPTS} attempts: {rejected}")


# ---------------------------------------------------------------- dataset


def plan(num_train: int, seed: int, frame_every: int) -> list[Task]:
    """All systems to build, split by split in :data:`SPLITS` order (sid = position)."""
    n_other = val_size(num_train)
    return [
        Task(split, i, seed, frame_every) for split in SPLITS for i in range(num_train if split == "train" else n_other)
    ]


def val_size(num_train: int) -> int:
    """Systems in each non-train IS2RE split: a quarter of train, at least 2, at most 100
    (OC20's val/test splits also stay fixed in size while train grows)."""
    return min(max(num_train // 4, 2), 100)


def _structure(system: dict, sid: int) -> dict:
    """The fields every entry of one built system shares (sid, atoms, cell, tags, fixed)."""
    tags = torch.as_tensor(system["tags"], dtype=torch.long)
    return dict(
        sid=sid,
        atomic_numbers=torch.as_tensor(system["atomic_numbers"], dtype=torch.long),
        cell=as_cell(torch.as_tensor(system["cell"], dtype=torch.float32))[None],
        natoms=len(tags),
        tags=tags,
        fixed=tags == 0,
    )


def to_is2re(system: dict, sid: int) -> Data:
    """IS2RE ``Data`` of one built system (see the module docstring for the fields)."""
    return Data(
        **_structure(system, sid),
        pos=torch.as_tensor(system["pos"], dtype=torch.float32),
        y_init=system["y_init"],
        y_relaxed=system["y_relaxed"],
        pos_relaxed=torch.as_tensor(system["pos_relaxed"], dtype=torch.float32),
    )


def to_s2ef(system: dict, sid: int) -> list[Data]:
    """S2EF ``Data`` frames (``fid`` = optimizer step) of one built system."""
    return [
        Data(
            **_structure(system, sid),
            fid=frame["fid"],
            pos=torch.as_tensor(frame["pos"], dtype=torch.float32),
            y=frame["y"],
            force=torch.as_tensor(frame["force"], dtype=torch.float32),
        )
        for frame in system["frames"]
    ]


def build(out: Path, num_train: int, seed: int, frame_every: int, workers: int, progress: bool = True) -> dict:
    """Build the demo world into the (new) folder ``out``; return the summary."""
    start = time.time()
    tasks = plan(num_train, seed, frame_every)
    warm_caches()
    stats = SummaryStats()
    mapping = {}
    with ordered_map(make_system, tasks, workers, "demo world", "system", progress, chunksize=2) as (results, bar):
        sid = 0
        for split in SPLITS:
            n = sum(t.split == split for t in tasks)
            s2ef_writer = LmdbWriter(out / "s2ef" / split / "data.lmdb") if split in S2EF_SPLITS else None
            with LmdbWriter(out / "is2re" / split / "data.lmdb") as is2re, s2ef_writer or nullcontext() as s2ef:
                for _ in range(n):
                    system = next(results)
                    is2re.append(to_is2re(system, sid))
                    frames = to_s2ef(system, sid) if s2ef else []
                    for frame in frames:
                        s2ef.append(frame)
                    stats.add(split, system, len(frames))
                    mapping[sid] = system["meta"]
                    sid += 1
                    bar.update()
    (out / "data_mapping.json").write_text(json.dumps(mapping, indent=1))
    summary = stats.summary()
    summary["build_seconds"] = round(time.time() - start, 1)
    summary["workers"] = workers
    return summary


def warm_caches() -> None:
    """Compute the shared references once in this process (forked workers inherit them)."""
    load_adsorbates()
    gas_references()
    for metal in METALS:
        emt_lattice_constant(metal)


class SummaryStats:
    """Counts and statistics of a build, collected system by system."""

    def __init__(self):
        self.entries = {}
        self.natoms, self.cells, self.y_init, self.y_relaxed, self.y_s2ef = [], [], [], [], []
        self.steps, self.rejected, self.intact = [], {}, []
        self.cpu_seconds = 0.0

    def add(self, split: str, system: dict, n_frames: int) -> None:
        self.entries[f"is2re/{split}"] = self.entries.get(f"is2re/{split}", 0) + 1
        if split in S2EF_SPLITS:
            self.entries[f"s2ef/{split}"] = self.entries.get(f"s2ef/{split}", 0) + n_frames
            self.y_s2ef += [f["y"] for f in system["frames"]]
        self.natoms.append(len(system["tags"]))
        self.cells.append(np.linalg.norm(system["cell"], axis=1))
        self.y_init.append(system["y_init"])
        self.y_relaxed.append(system["y_relaxed"])
        self.steps.append(system["meta"]["steps"])
        self.intact.append(system["meta"]["intact"])
        self.cpu_seconds += system["cpu_seconds"]
        for reason in system["rejected"]:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def summary(self) -> dict:
        cells = np.array(self.cells)
        return dict(
            version=VERSION,
            entries=self.entries,
            atoms_per_system=_describe(self.natoms),
            cell_lengths_A={k: _describe(cells[:, i]) for i, k in enumerate("abc")},
            y_init_eV=_describe(self.y_init),
            y_relaxed_eV=_describe(self.y_relaxed),
            s2ef_y_eV=_describe(self.y_s2ef),
            relax_steps=_describe(self.steps),
            adsorbate_intact_fraction=round(float(np.mean(self.intact)), 3),
            rejected_attempts=dict(sorted(self.rejected.items())),
            cpu_seconds_per_system=round(self.cpu_seconds / len(self.natoms), 3),
            gas_references_eV={k: round(v, 6) for k, v in gas_references().items()},
            emt_lattice_constants_A={m: round(emt_lattice_constant(m), 5) for m in METALS},
        )


def _describe(values) -> dict:
    """min / mean / std / max of ``values``, rounded for reading."""
    v = np.asarray(values, dtype=float)
    return {k: round(float(f(v)), 4) for k, f in (("min", np.min), ("mean", np.mean), ("std", np.std), ("max", np.max))}


def format_summary(summary: dict, out) -> str:
    """The summary as a few lines of text (``summary.json`` has it all)."""

    def stats(d, fmt=".2f"):
        return f"{d['min']:{fmt}} / {d['mean']:{fmt}} / {d['max']:{fmt}} (std {d['std']:{fmt}})"

    c = summary["config"]
    rows = [(name, f"{n:>7} entries") for name, n in summary["entries"].items()]
    rows += [
        ("", "min / mean / max"),
        ("atoms per system", stats(summary["atoms_per_system"], ".0f")),
        *((f"cell {k} (A)", stats(summary["cell_lengths_A"][k], ".1f")) for k in "abc"),
        ("y_init (eV)", stats(summary["y_init_eV"])),
        ("y_relaxed (eV)", stats(summary["y_relaxed_eV"])),
        ("s2ef y (eV)", stats(summary["s2ef_y_eV"])),
        ("relaxation steps", stats(summary["relax_steps"], ".0f")),
        ("adsorbates intact", f"{summary['adsorbate_intact_fraction']:.0%}"),
        ("rejected attempts", summary["rejected_attempts"] or "none"),
    ]
    head = (
        f"demo world in {out}: seed {c['seed']}, {c['num_train']} train systems, built in "
        f"{summary['build_seconds']} s with {summary['workers']} worker(s), "
        f"{summary['cpu_seconds_per_system']} CPU-s per system"
    )
    return "\n".join([head] + [f"  {label:<20} {value}" for label, value in rows])


# ---------------------------------------------------------------- command line


@contextmanager
def building(out: Path):
    """Yield an empty temporary sibling of ``out`` to build into; when the block ends without an
    error it replaces ``out`` (whole or not at all), otherwise it is removed and ``out`` kept."""
    tmp = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            shutil.rmtree(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def build_lock(out: Path):
    """Hold an exclusive lock on ``out``'s sibling ``.NAME.lock`` (``flock``: released when this
    process ends, however it ends): a second build of the same folder waits for the first, then
    finds it complete and reuses it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(f".{out.name}.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[demo] waiting for another process building {out}", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def make_demo(
    out: str | os.PathLike,
    small: bool = False,
    seed: int = 0,
    num_systems: int | None = None,
    frame_every: int = 5,
    workers: int = 2,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Build (or reuse) the demo world at ``out``; return its summary (also ``summary.json``).

    ``out`` is reused when it holds a complete build with the same settings; with
    ``force`` it is rebuilt. The build goes to a temporary sibling folder renamed onto
    ``out`` at the end, so ``out`` is never half-written; a concurrent build of the same
    ``out`` is waited for (:func:`build_lock`).
    """
    out = Path(out)
    num_train = num_systems or SIZES["small" if small else "default"]
    config = dict(version=VERSION, seed=seed, num_train=num_train, num_val=val_size(num_train), frame_every=frame_every)
    with build_lock(out):
        existing = out / "summary.json"
        if out.exists() and not force:
            if not existing.is_file():
                raise FileExistsError(f"{out} exists but holds no complete demo world (no summary.json); use --force")
            summary = json.loads(existing.read_text())
            if summary.get("config") != config:
                raise FileExistsError(
                    f"{out} holds a demo world built with {summary.get('config')}, not {config}; use --force"
                )
            return summary
        with building(out) as tmp:
            summary = build(tmp, num_train, seed, frame_every, workers, progress)
            summary["config"] = config
            (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m sfm.data.demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output folder (OC20 layout)")
    parser.add_argument("--small", action="store_true", help=f"{SIZES['small']} train systems (seconds; for tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--num_systems",
        type=int,
        default=None,
        help=f"IS2RE train systems (default {SIZES['default']}, --small {SIZES['small']}); "
        "other splits get min(max(N // 4, 2), 100) each",
    )
    parser.add_argument("--frame_every", type=int, default=5, help="S2EF: keep every k-th relaxation step")
    parser.add_argument("--workers", type=int, default=2, help="processes (output does not depend on it)")
    parser.add_argument("--force", action="store_true", help="rebuild even if --out holds a complete build")
    dense = parser.add_argument_group("dense split (sfm.data.dense: many relaxed placements per system)")
    dense.add_argument("--dense", action="store_true", help="also build (or reuse) OUT/is2re_dense")
    dense.add_argument("--dense_test", type=int, default=None, help="test_id systems (default: all)")
    dense.add_argument("--dense_val", type=int, default=25, help="val_id systems")
    dense.add_argument("--dense_train", type=int, default=25, help="train systems")
    dense.add_argument("--dense_sites", type=int, default=8, help="heuristic placements per system at most (0: all)")
    dense.add_argument("--dense_random", type=int, default=8, help="random placements per system")
    dense.add_argument("--dense_out", help="build into this folder instead of OUT/is2re_dense (e.g. a training set)")
    dense.add_argument("--dense_force", action="store_true", help="rebuild the dense folder even if complete")
    args = parser.parse_args(argv)
    if args.num_systems is not None and args.num_systems < 1:
        parser.error("--num_systems must be >= 1")
    if args.workers < 1 or args.frame_every < 1:
        parser.error("--workers and --frame_every must be >= 1")
    if min(args.dense_val, args.dense_train, args.dense_sites, args.dense_random, args.dense_test or 0) < 0:
        parser.error("--dense_test, --dense_val, --dense_train, --dense_sites and --dense_random must be >= 0")
    summary = make_demo(args.out, args.small, args.seed, args.num_systems, args.frame_every, args.workers, args.force)
    print(format_summary(summary, args.out))
    if args.dense:
        # imported here, not at the top: sfm.data.dense builds on this module
        from sfm.data import dense

        config = dense.DenseConfig(
            args.dense_val, args.dense_train, args.dense_sites or None, args.dense_random, args.seed, args.dense_test
        )
        out = Path(args.dense_out or Path(args.out) / "is2re_dense")
        summary["dense"] = dense.make_dense(args.out, config, args.workers, args.dense_force, out=out)
        print(dense.format_dense_summary(summary["dense"], out))
    return summary


if __name__ == "__main__":
    main()
