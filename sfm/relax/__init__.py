"""sfm.relax: batched FIRE / L-BFGS relaxation and an ASE calculator for sfm models."""

from sfm.data.atoms import atoms_to_data, batch_to_atoms
from sfm.relax.calculator import SFMCalculator
from sfm.relax.emt import EMTFn, emt_fn
from sfm.relax.relax_batch import RelaxFrame, RelaxResult, energy_forces_fn, relax_batch
from sfm.relax.relax_structures import RelaxSettings, relax_structures

__all__ = [
    "relax_batch",
    "SFMCalculator",
    "RelaxResult",
    "RelaxFrame",
    "energy_forces_fn",
    "emt_fn",
    "EMTFn",
    "atoms_to_data",
    "batch_to_atoms",
    "RelaxSettings",
    "relax_structures",
]
