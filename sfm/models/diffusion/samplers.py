"""Samplers for the joint (fractional coordinates, lattice) diffusion.

Two samplers over the same trained model:

- ``"pc"``, the reference (DiffCSP): predictor-corrector, ``steps`` steps (default 1000)
  of one Langevin corrector move on the coordinates (step ``corrector * sigma_i^2`` per
  axis) followed by the ancestral predictor (VE reverse step on the coordinates, DDPM
  posterior step on the lattice): 2 network calls per step.
- ``"ode"``, few-step: the probability-flow ODE integrated with Heun's method (EDM),
  ``steps`` steps (default 25) on a uniform grid in ``t``, Euler on the last step, so
  ``2 * steps - 1`` network calls (49 by default). Each part is integrated in its own
  noise variable, where its ODE is nearly linear: coordinates in their per-axis
  ``sigma`` (``dx/dsigma = -sigma * score``), the lattice in ``Zbar = Z / sqrt(ab)``
  against ``sqrt((1 - ab) / ab)`` (``dZbar = eps``; its Euler step is DDIM).
  ``churn > 0`` makes it EDM's stochastic Heun sampler: before each step but the last,
  the state is noised from ``t`` up to ``t + churn * (t - s)`` (fresh noise of the
  process, so the marginal is kept), which corrects errors of the learned score that a
  deterministic flow carries to the end; same number of network calls.

The lattice noise estimate is sanitised by clipping the clean latent it implies
(``LatticeProcess.clip_eps``). Both samplers hold given atoms and given lattices
exactly (given atoms keep their input ``pos`` bit for bit), wrap coordinates to
``[0, 1)`` after every move, and draw all randomness from ``generator``, so a seed
fixes the result.

The model is duck-typed: ``model.frac_process`` (``FracProcess``),
``model.lattice_process`` (``LatticeProcess``), ``model.given_tags`` and
``model.predict(atomic_numbers, frac, lattice, batch, t, sigma, masks, latent)`` returning the
normalised coordinate score ``[N, 3]`` and the lattice noise ``[B, 3, 3]``; ``latent`` is the
lattice state ``Z`` ``[B, 3, 3]`` of ``lattice`` (the sampled state, or a given lattice's encoding),
so the model need not re-encode the lattice it is handed.
"""

from __future__ import annotations

from typing import Callable

import torch

from sfm.data.lattice import as_cells, frac_to_cart, wrap_frac
from sfm.data.structure import name_structures
from sfm.models.diffusion import wrapped_normal
from sfm.models.diffusion.lattice_noise import canonical, sym_noise
from sfm.models.diffusion.masks import Masks, mode_masks

SAMPLERS = ("pc", "ode")
DEFAULT_STEPS = {"pc": 1000, "ode": 25}


class _Run:
    """What stays fixed during one sampling call: atoms, masks, given lattice, noise lengths."""

    def __init__(self, model, batch, masks: Masks):
        self.model = model
        self.batch = batch.batch
        self.numbers = batch.atomic_numbers.long()
        self.input = batch  # names its structures in errors
        self.masks = masks
        self.num_graphs = batch.num_graphs
        self.free = ~masks.atom_given[:, None]  # [N, 1] generated atoms move
        cell = getattr(batch, "cell", None)
        if masks.lattice_given.any() and cell is None:
            raise ValueError("a lattice-given mode needs `cell` in the batch")
        self.dtype = cell.dtype if cell is not None else torch.float32
        self.cell = as_cells(cell) if cell is not None else torch.eye(3, dtype=self.dtype).expand(self.num_graphs, 3, 3)
        self.lengths = model.frac_process.axis_lengths(self.cell, masks.lattice_given)
        self.z_given = model.lattice_process.encode(self.cell)  # the state of a given lattice, once per call

    def times(self, t: float) -> torch.Tensor:
        return torch.full((self.num_graphs,), t, dtype=self.dtype, device=self.batch.device)

    def sigma(self, t: float) -> torch.Tensor:
        """Per-atom fractional noise ``[N, 3]`` at time ``t``."""
        return self.model.frac_process.sigma(self.times(t), self.lengths)[self.batch]

    def lattice(self, z: torch.Tensor) -> torch.Tensor:
        gen = self.model.lattice_process.decode(z)
        return torch.where(self.masks.lattice_given[:, None, None], self.cell, gen)

    def latent(self, z: torch.Tensor) -> torch.Tensor:
        """The state the model is conditioned on: ``z``, or a given lattice's own encoding."""
        return torch.where(self.masks.lattice_given[:, None, None], self.z_given, z)

    def predict(self, x, z, t: float):
        """``(score [N, 3] in fractional units, eps [B, 3, 3])`` at state ``(x, z)``, time ``t``."""
        tt = self.times(t)
        sigma_graph = self.model.frac_process.sigma(tt, self.lengths)
        coord, eps = self.model.predict(
            self.numbers, x, self.lattice(z), self.batch, tt, sigma_graph, self.masks, self.latent(z)
        )
        bad = ~torch.isfinite(eps).flatten(1).all(-1)
        bad[self.batch[~torch.isfinite(coord).all(-1)]] = True
        if bad.any():  # stop here: a NaN state would only fail later, far from its cause
            raise FloatingPointError(
                f"the diffusion model's output is not finite at t = {t:.4g} for {int(bad.sum())} "
                f"structure(s) ({name_structures(self.input, bad.nonzero().flatten()[:10])}): "
                "the checkpoint is broken or the input far from its training data"
            )
        sigma = sigma_graph[self.batch]
        return coord * wrapped_normal.score_norm(sigma), self.model.lattice_process.clip_eps(z, eps, tt)

    def move(self, x, dx):
        """Generated atoms moved by ``dx`` and wrapped; given atoms untouched."""
        return torch.where(self.free, wrap_frac(x + dx), x)

    def hold(self, z, z_new):
        return torch.where(self.masks.lattice_given[:, None, None], z, z_new)


@torch.no_grad()
def sample(
    model,
    batch,
    mode: str = "csp",
    sampler: str = "pc",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    atom_given: torch.Tensor | None = None,
    corrector: float = 0.4,
    callback: Callable[[int, int], None] | None = None,
    t_start: float = 1.0,
    renoise: bool = True,
    churn: float = 0.0,
):
    """Generate structures for ``batch`` (a PyG ``Batch``); returns a copy with ``pos``, ``cell``, ``frac``.

    ``batch`` needs ``atomic_numbers`` and ``batch``; lattice-given modes need ``cell``
    ``[B, 3, 3]``; ``inpaint`` needs ``pos`` and ``tags`` (given atoms: ``tags in
    model.given_tags``) or an explicit ``atom_given`` ``[N]`` bool. ``mode`` is one of
    ``csp | lattice_given | inpaint``; ``sampler`` ``pc | ode`` (module doc); ``steps``
    defaults to 1000 (pc) / 25 (ode); ``corrector`` is the pc Langevin step factor (0
    turns the corrector off: pure ancestral sampling, 1 call per step). ``callback(i,
    steps)`` is called after each step. Generated lattices come in canonical
    (lower-triangular) orientation; given ones are returned as given.

    ``t_start < 1`` refines instead of generating (SDEdit): the generated atoms (and a
    generated lattice) start from the input ``pos`` (and ``cell``) noised to level
    ``t_start`` and the ``steps`` steps run from ``t_start`` to 0. With a given slab and
    the initial adsorbate as input this keeps the adsorption site and moves the atoms
    toward the model's relaxed structure; 1 (default) starts from the prior. Use it with
    ``ode`` or ``corrector=0``: the Langevin corrector mixes over each noise level and,
    over many steps, forgets where it started. ``renoise=False`` skips the added noise: the
    input itself is taken as the noisy state at ``t_start`` (deterministic with ``ode``; a
    placement ~``sigma(t_start)`` from the relaxed one is denoised toward it).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    steps = DEFAULT_STEPS[sampler] if steps is None else int(steps)
    check_options(sampler, steps, t_start, renoise, churn)
    if t_start < 1.0 and (getattr(batch, "pos", None) is None or getattr(batch, "cell", None) is None):
        raise ValueError("t_start < 1 refines the input structure: the batch needs `pos` and `cell`")
    masks = mode_masks(batch, mode, model.given_tags, atom_given)
    was_training = model.training
    model.eval()
    try:
        return _sample(model, batch, masks, sampler, steps, generator, corrector, callback, t_start, renoise, churn)
    finally:
        model.train(was_training)


def check_options(sampler: str, steps: int | None, t_start: float, renoise: bool, churn: float) -> None:
    """ValueError naming the first bad setting of :func:`sample` (``steps`` None: not checked)."""
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
    if not renoise and t_start >= 1.0:
        raise ValueError("renoise=False (--no_renoise) refines the input as it is: it needs t_start < 1")
    if churn < 0 or (churn > 0 and sampler != "ode"):
        raise ValueError(f"churn must be >= 0 and is a setting of the ode sampler, got {churn} for {sampler!r}")


def _sample(model, batch, masks: Masks, sampler, steps, generator, corrector, callback, t_start, renoise, churn):
    run = _Run(model, batch, masks)
    device, dtype = run.batch.device, run.dtype
    lat = model.lattice_process

    if t_start < 1.0:
        x_input = batch.frac.to(dtype)
        z = lat.encode(run.cell)
        if renoise:
            x = torch.where(run.free, wrapped_normal.sample(x_input, run.sigma(t_start), generator), x_input)
            z = lat.add_noise(z, run.times(t_start), generator)[0]
        else:
            x, z = x_input, z * lat.alpha_bar(run.times(t_start))[:, None, None].sqrt()
    else:
        x = torch.rand(len(run.numbers), 3, generator=generator, dtype=dtype, device=device)
        if masks.atom_given.any():
            x_given = batch.frac.to(dtype)
            x = torch.where(run.free, x, x_given)
        z = lat.prior(run.num_graphs, generator, dtype, device)
    grid = torch.linspace(t_start, 0.0, steps + 1, dtype=torch.float64).tolist()

    for i in range(steps):
        t, s = grid[i], grid[i + 1]
        if sampler == "pc":
            x, z = _pc_step(run, x, z, t, s, corrector, generator)
        else:
            last = i == steps - 1
            if churn > 0 and not last:
                t_hat = min(1.0, t + churn * (t - s))
                x, z = _churn(run, x, z, t, t_hat, generator)
                t = t_hat
            x, z = _heun_step(run, x, z, t, s, last=last)
        if callback is not None:
            callback(i + 1, steps)

    lattice = torch.where(masks.lattice_given[:, None, None], run.cell, canonical(run.lattice(z)))
    pos = frac_to_cart(x, lattice[run.batch])
    if masks.atom_given.any():
        pos = torch.where(run.free, pos, batch.pos.to(dtype))
    out = batch.clone()
    out.pos, out.cell, out.frac = pos, lattice, x
    return out


def _noise(like: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


def _pc_step(run: _Run, x, z, t: float, s: float, corrector: float, generator):
    """One Langevin corrector move at ``t`` (if ``corrector > 0``), then the ancestral step ``t -> s``."""
    sig_t, sig_s = run.sigma(t), run.sigma(s)
    if corrector > 0:
        score, _ = run.predict(x, z, t)
        step = corrector * sig_t**2
        x = run.move(x, step * score + (2 * step).sqrt() * _noise(x, generator))
    score, eps = run.predict(x, z, t)
    dvar = sig_t**2 - sig_s**2  # zero on saturated axes: no move there
    x = run.move(x, dvar * score + (dvar * sig_s**2 / sig_t**2).sqrt() * _noise(x, generator))
    lat = run.model.lattice_process
    z = run.hold(z, lat.ancestral_step(z, eps, run.times(t), run.times(s), generator))
    return x, z


def _churn(run: _Run, x, z, t: float, t_hat: float, generator):
    """The state at ``t`` noised forward to ``t_hat >= t`` with the process's own noise."""
    dvar = (run.sigma(t_hat) ** 2 - run.sigma(t) ** 2).clamp(min=0)
    x = run.move(x, dvar.sqrt() * _noise(x, generator))
    lat = run.model.lattice_process
    ratio = (lat.alpha_bar(run.times(t_hat)) / lat.alpha_bar(run.times(t)))[:, None, None]
    eps = sym_noise(len(z), generator, z.dtype, z.device)
    z = run.hold(z, ratio.sqrt() * z + (1 - ratio).clamp(min=0).sqrt() * eps)
    return x, z


def _heun_step(run: _Run, x, z, t: float, s: float, last: bool):
    """Probability-flow ODE step ``t -> s``: Heun, or Euler when ``last``."""
    lat = run.model.lattice_process
    tt, ts = run.times(t), run.times(s)
    sig_t, sig_s = run.sigma(t), run.sigma(s)
    ab_t, ab_s = lat.alpha_bar(tt)[:, None, None], lat.alpha_bar(ts)[:, None, None]
    dsb = (lat.ode_sigma(ts) - lat.ode_sigma(tt))[:, None, None]

    def slopes(x_, z_, time, sig):
        score, eps = run.predict(x_, z_, time)
        return -sig * score, eps  # dx/dsigma, dZbar/dsigma_bar

    dx1, dz1 = slopes(x, z, t, sig_t)
    zbar = z / ab_t.sqrt()
    x_e = run.move(x, (sig_s - sig_t) * dx1)
    z_e = run.hold(z, (zbar + dsb * dz1) * ab_s.sqrt())
    if last:
        return x_e, z_e
    dx2, dz2 = slopes(x_e, z_e, s, sig_s)
    x_h = run.move(x, (sig_s - sig_t) * 0.5 * (dx1 + dx2))
    z_h = run.hold(z, (zbar + dsb * 0.5 * (dz1 + dz2)) * ab_s.sqrt())
    return x_h, z_h
