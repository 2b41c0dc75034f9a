"""A diffusion "model" with an exact score, for testing samplers without a network.

Data: atom of type Z sits at fractional ``centres[Z]`` with wrapped-normal spread ``tau``
per axis; the lattice latent ``Z_0`` is Gaussian, entrywise ``N(lat_mean, lat_var)``
(symmetric). Both noised marginals are known in closed form, so the exact normalised
score and the exact noise estimate ``E[eps | Z_t]`` are too.
"""

import torch
from torch import nn

from sfm.models.diffusion import wrapped_normal
from sfm.models.diffusion.coord_noise import FracProcess
from sfm.models.diffusion.lattice_noise import LatticeProcess


class AnalyticModel(nn.Module):
    def __init__(
        self, centres: torch.Tensor, tau: float, lat_mean: torch.Tensor, lat_var: float, ref_lengths=(8.0, 9.0, 30.0)
    ):
        super().__init__()
        self.frac_process = FracProcess(ref_lengths=ref_lengths)
        self.lattice_process = LatticeProcess()
        self.given_tags = (0, 1)
        self.centres, self.tau = centres.double(), tau
        self.lat_mean, self.lat_var = lat_mean.double(), lat_var
        self.calls = 0

    def predict(self, atomic_numbers, frac, lattice, batch, t, sigma, masks, latent):
        self.calls += 1
        sig = sigma[batch].double()
        mu = self.centres[atomic_numbers]
        total = (sig**2 + self.tau**2).sqrt()
        coord = wrapped_normal.score(frac.double(), mu, total) / wrapped_normal.score_norm(sig)
        zt = latent.double()  # the sampler hands the state Z_t itself
        ab = self.lattice_process.alpha_bar(t.double())[:, None, None]
        eps = (1 - ab).sqrt() * (zt - ab.sqrt() * self.lat_mean) / (ab * self.lat_var + 1 - ab)
        return coord.to(frac.dtype), eps.to(frac.dtype)
