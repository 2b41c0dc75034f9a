"""Noise process on fractional coordinates: variance-exploding wrapped normal, per axis.

Each fractional coordinate ``x`` (``[N, 3]`` in ``[0, 1)``) is noised on the torus with a
wrapped normal (``wrapped_normal.py``), ``x_t ~ WN(x_0, sigma_t^2)`` per axis, and the
network learns the exact wrapped score (summed over images), divided by its RMS
(DiffCSP). What differs from DiffCSP is how ``sigma`` is set per axis.

OC20 anisotropy. DiffCSP uses one fractional ``sigma`` (0.005 -> 0.5) for all three axes.
In an OC20 cell (a, b ~ 10 A, c ~ 35 A, mostly vacuum) that noise is 3.5 times larger
along c than along a, b in A, and its floor 0.005 is 0.05 A in-plane but 0.18 A in
height: the adsorbate's height, which is what placement is about, would be the least
resolved coordinate. Here the noise is isotropic in Cartesian space and expressed per
lattice axis:

    sigma_cart(t) = sigma_min^(1 - t) * sigma_max^t                       (A, geometric)
    sigma_i(t)    = min(sigma_cart(t) / |a_i|, 0.5)                        (fractional, axis i)
    sigma_max     = 0.5 * max_i |a_i|

so at ``t = 0`` every axis is resolved to ``sigma_min`` A (0.01 A by default) and at
``t = 1`` every axis is at ``sigma = 0.5``, where the wrapped normal is uniform to 1.4 %
(the prior is uniform on the torus). An axis whose fractional noise reaches 0.5 stays
there (no more noise is added: it is already uniform), so the short in-plane axes
saturate before the long vacuum axis. For near-cubic bulk cells this is DiffCSP's
process up to the (geometric) schedule.

The axis lengths ``|a_i|`` come from the clean lattice when it is given (lattice-given
and inpainting modes, also at sampling time), otherwise from ``ref_lengths``, the data's
mean row lengths (a buffer, fitted by :meth:`FracProcess.fit`): a sampler that generates
the lattice cannot know the clean one. The network sees which case applies through its
conditioning (mask channel and noise levels).
"""

from __future__ import annotations

import torch
from torch import nn

from sfm.models.diffusion import wrapped_normal

SIGMA_CAP = 0.5  # fractional noise at which an axis counts as uniform (DiffCSP's sigma_max)


class FracProcess(nn.Module):
    """Per-axis wrapped-normal VE process on fractional coordinates; see the module doc.

    ``sigma_min`` in A; buffer ``ref_lengths`` ``[3]`` (A) used when the lattice is generated.
    """

    def __init__(self, sigma_min: float = 0.01, ref_lengths=(10.0, 10.0, 35.0)):
        super().__init__()
        self.sigma_min = sigma_min
        self.register_buffer("ref_lengths", torch.tensor(ref_lengths, dtype=torch.float32))

    @torch.no_grad()
    def fit(self, lattices: torch.Tensor) -> None:
        """Set ``ref_lengths`` to the mean row lengths of ``lattices`` ``[M, 3, 3]``."""
        self.ref_lengths.copy_(lattices.norm(dim=-1).mean(0))

    def axis_lengths(self, lattice: torch.Tensor, lattice_given: torch.Tensor) -> torch.Tensor:
        """``[B, 3]`` axis lengths for the noise: the given lattice's rows, else ``ref_lengths``."""
        return torch.where(lattice_given[:, None], lattice.norm(dim=-1), self.ref_lengths.to(lattice.dtype))

    def sigma(self, t: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Fractional noise ``[B, 3]`` at times ``t`` ``[B]`` for axis lengths ``[B, 3]``."""
        sigma_max = SIGMA_CAP * lengths.max(dim=-1).values
        cart = self.sigma_min ** (1 - t) * sigma_max**t
        return (cart[:, None] / lengths).clamp(max=SIGMA_CAP)

    def add_noise(self, x0: torch.Tensor, sigma: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, target)`` for clean ``x0`` ``[N, 3]`` and per-atom ``sigma`` ``[N, 3]``.

        ``target`` is the exact wrapped score of ``x_t`` divided by ``score_norm(sigma)``.
        """
        xt = wrapped_normal.sample(x0, sigma, generator)
        return xt, self.score_target(xt, x0, sigma)

    @staticmethod
    def score_target(xt: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The training target at state ``xt`` ``[N, 3]``: wrapped score toward ``x0`` over ``score_norm(sigma)``."""
        return wrapped_normal.score(xt, x0, sigma) / wrapped_normal.score_norm(sigma)
