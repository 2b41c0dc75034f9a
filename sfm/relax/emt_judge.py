"""The demo world's judge: ASE EMT re-evaluates what a model relaxed, on the demo world's scale.

Two uses. Scoring model-relaxed samples (:class:`EMTJudge`, below), and relaxing placements with
EMT exactly as the dense split's were (:func:`judge_placements`: success@k against the dense
minimum, :mod:`sfm.eval.success`).

A judge is what scoring hands the model-relaxed samples to for a second opinion (AdsorbML's
"ML+SP" / "ML+RX"): ``judge(samples, final_pos, references) -> (energies, judge_pos)``, with
``energies`` one float (eV, the references' scale) per sample and ``judge_pos`` the judge's own
relaxed positions (or None); ``judge.name`` says which; ``judge.check(samples)`` raises
ValueError naming a sample it cannot judge. :class:`EMTJudge` is the demo world's.

EMT energies are put on the reference's scale, the demo world's adsorption energy
``E - E_slab - E_gas`` (:mod:`sfm.data.demo`): the offset ``E_slab + E_gas`` of a system is
``E_EMT(pos_relaxed) - y_relaxed`` of its reference entry, or, without one, the demo world's
recipe (:func:`sfm.data.emt_world.relax` of the clean slab from the sample's slab atoms at their
input positions, plus :func:`sfm.data.emt_world.gas_references`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch_geometric.data import Data
from tqdm import tqdm

from sfm.data import collate, data_to_atoms
from sfm.data.emt_world import check_emt_elements, gas_references, relax, relax_clean_slab, relax_placement
from sfm.data.parallel import ordered_map
from sfm.data.structure import ADSORBATE_TAG, sid_of
from sfm.relax.emt import EMTFn
from sfm.relax.relax_structures import RelaxSettings, relax_input, relax_structures


def emt_energies(structures: list[Data], pos: list[torch.Tensor] | None = None) -> np.ndarray:
    """[n] EMT potential energies (eV) of ``structures`` (at ``pos`` where given)."""
    check_emt_elements(structures)
    items = [relax_input(d, i, None if pos is None else pos[i]) for i, d in enumerate(structures)]
    return EMTFn()(collate(items))[0].double().numpy()


def emt_offset_from_reference(ref: Data) -> float:
    """``E_slab + E_gas`` of a reference entry: ``E_EMT(pos_relaxed) - y_relaxed`` (eV)."""
    return float(emt_energies([ref], [ref.pos_relaxed])[0]) - float(ref.y_relaxed)


def emt_offset_from_recipe(sample: Data) -> float:
    """``E_slab + E_gas`` by the demo world's recipe: the clean slab (tags 0, 1 at the sample's
    input positions) relaxed with EMT + LBFGS, plus the gas references."""
    from ase.data import chemical_symbols

    tags = sample.tags.numpy()
    traj = relax(data_to_atoms(sample)[tags != ADSORBATE_TAG])
    gas = gas_references()
    return float(traj.energies[-1]) + sum(
        gas[chemical_symbols[z]] for z in sample.atomic_numbers[tags == ADSORBATE_TAG].tolist()
    )


class EMTJudge:
    """EMT single points at the model-relaxed positions (``name`` "emt", AdsorbML's ML+SP) or,
    with ``relax``, an EMT relaxation from there (``name`` "emt_relax", ML+RX, with
    ``settings``, always on the CPU)."""

    NAMES = ("emt", "emt_relax")

    def __init__(self, relax: bool = False, settings: RelaxSettings = RelaxSettings()):
        self.relax = relax
        self.name = self.NAMES[relax]
        self.settings = replace(settings, device="cpu", max_atoms=None)

    def check(self, samples: list[Data]) -> None:
        check_emt_elements(samples)

    def __call__(self, samples: list[Data], final_pos: list[torch.Tensor], references: dict):
        """``(energies, judge_pos)``: per sample the EMT energy on the references' scale (eV) and,
        with ``relax``, the EMT-relaxed positions (else None)."""
        judge_pos = None
        if self.relax:
            runs = relax_structures(EMTFn(), samples, self.settings, "relax (EMT judge)", pos=final_pos)
            raw, judge_pos = [r["energy"] for r in runs], [r["pos"] for r in runs]
        else:
            raw = emt_energies(samples, final_pos).tolist()
        offsets = {}
        for d in tqdm(samples, desc="EMT references", disable=not self.settings.progress, mininterval=1.0):
            sid = sid_of(d)
            if sid not in offsets:
                ref = references.get(sid)
                ok = ref is not None and "pos_relaxed" in ref and "y_relaxed" in ref
                offsets[sid] = emt_offset_from_reference(ref) if ok else emt_offset_from_recipe(d)
        return [e - offsets[sid_of(d)] for e, d in zip(raw, samples)], judge_pos


def judge_system(job: tuple[list, float]) -> list[dict]:
    """The results of one system's placements (``(placements as Atoms, e_slab + e_gas)``): the clean
    slab (the first placement's tag 0/1 atoms) relaxed once, then each placement relaxed and flagged
    against it (:func:`sfm.data.emt_world.relax_placement`)."""
    atoms, offset = job
    clean = relax_clean_slab(atoms[0][atoms[0].get_tags() != 2])
    return [relax_placement(a, clean, offset) for a in atoms]


def judge_placements(systems: list[tuple[list, float]], workers: int = 1) -> list[list[dict]]:
    """:func:`judge_system` of each system, in order, over ``workers`` processes (the results do not
    depend on it): each placement relaxed with EMT and flagged exactly as the dense split's were."""
    with ordered_map(judge_system, systems, workers, "EMT judge", "system", progress=False) as (results, _):
        return list(results)
