"""ASE calculator for an sfm S2EF model, so ASE optimisers and MD run with it.

atoms.calc = SFMCalculator("model.pt", device="cpu")   # or a model object
FIRE(atoms).run(fmax=0.05)
"""

from __future__ import annotations

import os

import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from torch_geometric.data import Batch

from sfm.data.atoms import atoms_to_data


def as_model(checkpoint_or_model, device="cpu"):
    """A model in eval mode on `device`: a path is read with `sfm.load_checkpoint`, a model is used as is."""
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        from sfm import load_checkpoint

        return load_checkpoint(checkpoint_or_model, map_location=device)
    return checkpoint_or_model.to(device).eval()


class SFMCalculator(Calculator):
    """Energy (eV), forces (eV/A) and, for conservative models, stress (eV/A^3, ASE sign and
    Voigt order xx yy zz yz xz xy) from an S2EF model (`predict(batch, stress=...)`).

    checkpoint_or_model: a consolidated `.pt` path or a model object. The structure is sent
    as the OC20 fields (pos, cell, atomic_numbers, tags, fixed from FixAtoms) in the model's
    dtype; the cell is treated as periodic in a, b and c whatever `atoms.pbc` says (as OC20).
    Direct-force models give no stress (asking raises PropertyNotImplementedError).
    """

    def __init__(self, checkpoint_or_model, device="cpu", **kwargs):
        super().__init__(**kwargs)
        self.model = as_model(checkpoint_or_model, device)
        self.device = torch.device(device)
        self.dtype = next(self.model.parameters()).dtype
        self.conservative = getattr(self.model, "forces_mode", "direct") == "conservative"
        self.implemented_properties = ["energy", "free_energy", "forces"] + (["stress"] if self.conservative else [])

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        batch = Batch.from_data_list([atoms_to_data(self.atoms, dtype=self.dtype)]).to(self.device)
        stress = "stress" in properties and self.conservative
        out = self.model.predict(batch, stress=True) if stress else self.model.predict(batch)
        energy = out["energy"].item()
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out["forces"].detach().double().cpu().numpy(),
        }
        if stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out["stress"][0].detach().double().cpu().numpy())
