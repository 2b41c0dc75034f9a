"""Adsorbate placements on a slab as OC20 / AdsorbML make them: every heuristic site, and random ones.

The sites and the placement are fairchem-data-oc's (``fairchem.data.oc.core.AdsorbateSlabConfig``):

heuristic
    every site pymatgen's ``AdsorbateSiteFinder`` finds on the surface atoms (tag 1): on-top,
    bridge and hollow, reduced by the slab's symmetry (a pure metal facet has a handful, an
    alloy slab, having little symmetry, often 100-300), in a shuffled order.
random
    sites drawn uniformly on the Delaunay triangles of the surface atoms
    (``random_site_heuristic_placement``, AdsorbML's random placements).

On either, a binding atom (drawn among the adsorbate's binding indices) goes over the site, the
adsorbate is rotated uniformly about the surface normal with a wobble of at most 20 degrees
away from its stored (binding-down) orientation, and it is lifted along the normal until the
closest adsorbate-slab pair is 0.1 A beyond the sum of their covalent radii. The adsorbate is
moved rigidly: its internal distances are those of the gas-phase geometry it is given.

Returned structures follow the demo world's conventions (:mod:`sfm.data.demo`): slab atoms as
given with their tags 0/1, adsorbate atoms appended with tag 2, subsurface (tag 0) fixed, all
three directions periodic, positions wrapped into the cell. AdsorbML names the configurations
``heur<i>`` and ``rand<i>``; :attr:`Placement.config_id` does the same.

Determinism: fairchem draws from NumPy's global generator; each call seeds it from
``SeedSequence([seed, source])`` and restores the caller's global state afterwards, so the
result depends on ``seed`` only.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms

from sfm.data.demo import Adsorbate, load_adsorbates

SOURCES = ("heuristic", "random")
CONFIG_PREFIX = {"heuristic": "heur", "random": "rand"}
INTERSTITIAL_GAP = 0.1  # A beyond the covalent-radius contact (fairchem's default)


@dataclass(frozen=True)
class Placement:
    """One placed adsorbate: ``atoms`` (slab + adsorbate, K atoms, tags 0/1/2), ``source``
    ("heuristic" or "random"), ``index`` within its source, ``site`` [3] A (where the
    binding atom was put before the lift)."""

    atoms: Atoms
    source: str
    index: int
    site: np.ndarray

    @property
    def config_id(self) -> str:
        """AdsorbML's name of the configuration: ``heur<i>`` or ``rand<i>``."""
        return f"{CONFIG_PREFIX[self.source]}{self.index}"


def oc20_adsorbate(smiles: str) -> Adsorbate:
    """The entry ``smiles`` of fairchem-data-oc's OC20 adsorbate list (e.g. ``"*CO"``)."""
    table = {a.smiles: a for a in load_adsorbates(max_atoms=sys.maxsize)}
    if smiles not in table:
        raise KeyError(f"adsorbate {smiles!r} is not in the OC20 list ({len(table)} entries, e.g. {sorted(table)[:4]})")
    return table[smiles]


def heuristic_placements(
    slab: Atoms, adsorbate: Adsorbate | str, seed: int = 0, max_sites: int | None = None
) -> list[Placement]:
    """One placement on every heuristic site of ``slab`` (module docstring); with
    ``max_sites``, only the first ``max_sites`` of the shuffled sites (a uniform subset)."""
    if max_sites is not None and max_sites < 1:
        raise ValueError(f"max_sites must be >= 1 or None, got {max_sites}")
    configs = _configs(slab, adsorbate, "heuristic", sys.maxsize, seed)
    return configs[:max_sites] if max_sites is not None else configs


def random_placements(slab: Atoms, adsorbate: Adsorbate | str, num: int, seed: int = 0) -> list[Placement]:
    """``num`` placements on uniformly random surface sites of ``slab`` (module docstring)."""
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    if num == 0:
        return []
    configs = _configs(slab, adsorbate, "random", num, seed)
    if len(configs) < num:  # fairchem oversamples 2x; a tiny or odd surface can still fall short
        raise RuntimeError(f"fairchem gave {len(configs)} random sites on {slab.get_chemical_formula()}, wanted {num}")
    return configs


def placements(
    slab: Atoms, adsorbate: Adsorbate | str, num_random: int, seed: int = 0, max_sites: int | None = None
) -> list[Placement]:
    """The heuristic placements (at most ``max_sites``) followed by ``num_random`` random ones."""
    return heuristic_placements(slab, adsorbate, seed, max_sites) + random_placements(slab, adsorbate, num_random, seed)


def _configs(slab: Atoms, adsorbate: Adsorbate | str, source: str, num_sites: int, seed: int) -> list[Placement]:
    """fairchem's placements of ``adsorbate`` on ``slab`` in mode ``source``, converted."""
    ads = oc20_adsorbate(adsorbate) if isinstance(adsorbate, str) else adsorbate
    _check(slab, ads)
    fc = _fairchem_placement()
    tagged = slab.copy()
    tagged.set_constraint(FixAtoms(mask=tagged.get_tags() == 0))  # fairchem's Slab insists on a constraint
    fc_slab = fc.Slab(slab_atoms=tagged, min_ab=0.0)  # the demo's cells may be narrower than fairchem's 8 A
    fc_ads = fc.Adsorbate(adsorbate_atoms=ads.atoms, adsorbate_binding_indices=list(ads.binding))
    mode = "heuristic" if source == "heuristic" else "random_site_heuristic_placement"
    with _seeded_global_numpy(np.random.SeedSequence([seed, SOURCES.index(source)])):
        config = fc.AdsorbateSlabConfig(
            fc_slab, fc_ads, num_sites=num_sites, mode=mode, interstitial_gap=INTERSTITIAL_GAP
        )
    out = []
    for i, (atoms, meta) in enumerate(zip(config.atoms_list, config.metadata_list)):
        atoms.pbc = True
        atoms.set_constraint(FixAtoms(mask=atoms.get_tags() == 0))
        atoms.wrap()
        out.append(Placement(atoms, source, i, np.asarray(meta["site"], dtype=float)))
    return out


def _check(slab: Atoms, ads: Adsorbate) -> None:
    """Raise ValueError naming what is wrong with the inputs."""
    tags = slab.get_tags()
    if not np.isin(tags, (0, 1)).all():
        raise ValueError(
            f"slab {slab.get_chemical_formula()}: tags must be 0 (subsurface) or 1 (surface), "
            f"got {sorted(set(tags.tolist()))}"
        )
    if not (tags == 1).any():
        raise ValueError(f"slab {slab.get_chemical_formula()}: no surface atom (tag 1) to place on")
    if not ads.binding or not all(0 <= b < len(ads.atoms) for b in ads.binding):
        raise ValueError(
            f"adsorbate {ads.smiles or ads.atoms.get_chemical_formula()}: binding indices "
            f"{ads.binding} not within its {len(ads.atoms)} atoms"
        )


@contextmanager
def _seeded_global_numpy(seed: np.random.SeedSequence):
    """NumPy's global generator seeded from ``seed`` inside, the caller's state restored after."""
    state = np.random.get_state()
    np.random.seed(seed.generate_state(4))
    try:
        yield
    finally:
        np.random.set_state(state)


def _fairchem_placement() -> types.SimpleNamespace:
    """fairchem-data-oc's ``AdsorbateSlabConfig``, ``Slab`` and ``Adsorbate``.

    The package ``fairchem.data.oc.core`` imports ``Bulk`` in its ``__init__``, which needs
    fairchem-core (a training framework this project does not install); the three modules used
    here need only ASE, pymatgen and SciPy. When the package import fails for that reason, the
    modules are imported from the package folder without running its ``__init__``.
    """
    name = "fairchem.data.oc.core"
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("fairchem.core"):
            raise
        oc = importlib.util.find_spec("fairchem.data.oc")
        package = types.ModuleType(name)
        package.__path__ = [f"{oc.submodule_search_locations[0]}/core"]
        sys.modules[name] = package
    return types.SimpleNamespace(
        AdsorbateSlabConfig=importlib.import_module(f"{name}.adsorbate_slab_config").AdsorbateSlabConfig,
        Slab=importlib.import_module(f"{name}.slab").Slab,
        Adsorbate=importlib.import_module(f"{name}.adsorbate").Adsorbate,
    )
