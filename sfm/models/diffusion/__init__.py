"""sfm.models.diffusion: noise processes (torus coordinates, lattice), conditioning masks, diffusion head, samplers.

- ``wrapped_normal``: the wrapped normal on the torus (density, exact score, score RMS).
- ``coord_noise.FracProcess``: per-axis noise on fractional coordinates.
- ``lattice_noise.LatticeProcess``: DDPM on the log of the lattice's symmetric polar factor.
- ``masks``: csp / lattice_given / inpaint conditioning.
- ``model.DiffusionModel``: backbone + heads, ``loss(batch)``, ``sample(batch, ...)``.
- ``samplers.sample``: predictor-corrector (reference) and few-step Heun ODE.
- ``baselines.sample_baseline``: the initial structure and uniformly random coordinates.
"""

from sfm.models.diffusion.model import DiffusionModel
from sfm.models.diffusion.samplers import sample

__all__ = ["DiffusionModel", "sample"]
