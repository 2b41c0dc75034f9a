"""Diffusion model: the EquiformerV2 backbone with a coordinate-score head and a lattice-noise head.

Reads as the diagram::

    t, per-axis sigma, lattice latent, masks, anchors -> conditioning MLP -> cond [N, W]
                                                           -> modulates every block
    (Z, noisy frac, lattice)  -> backbone -> x [N, (lmax+1)^2, C]
         x, graph -> attention layer -> l=1 vector v [N, 3] (Cartesian)
                  + gates(scalars) . anchor vectors d [N, 3, 3] (to given / generated / surface atoms)
                  -> coord score (normalised) = v . a_i / |a_i|    [N, 3], per lattice axis i
         x, lattice -> symmetric tensor T [B, 3, 3] (Cartesian, rotates as R T R^T)
                  -> lattice eps = Q T Q^T   (Q: polar rotation of the lattice)

Symmetry by construction (tested in tests/models/diffusion/test_model.py): the backbone sees only
distances, relative vectors and ``L L^T``, so ``v`` rotates with the structure and its
projections on the unit lattice vectors, the fractional-coordinate scores, are
invariant; atoms permute with their features; a common shift of all fractional
coordinates changes no edge, so nothing changes. ``T`` is built from the unit lattice
rows ``A`` and per-atom l=1 features: ``T = A^T M A + mean_n sum_k sym(u_nk w_nk^T)``
with ``M`` a symmetric matrix from invariants, so it rotates as a tensor; carried to the
rotation-free frame of the lattice process (``lattice_noise.py``) by ``Q``, it becomes the
invariant noise estimate ``eps``; in the frame of the input lattice it is ``eps Q``
(:meth:`DiffusionModel.forward` ``lattice_noise``), which rotates with the lattice.

Conditioning: a sinusoidal embedding of ``t``, the per-axis fractional noise levels
(``log sigma``), the lattice latent ``Z = encode(L)`` (6 invariant numbers, unit scale:
the state the lattice noise is predicted from, which the raw cell shows only as strains
of ``std``, 1 % on entries the data hardly vary), two mask channels (this atom is
given; this lattice is given) and the atom's tag (one-hot; zeros when unknown, see
``masks.py``) go through an MLP into the backbone's ``cond`` input, per atom, with the
anchor displacements of ``anchors.py`` to three groups: the given atoms, the other
generated atoms, and the surface atoms (tag 1). In a mostly-vacuum OC20 cell a noisy
adsorbate atom often has no neighbour within the cutoff, and only these tell it where
the slab is and which face is the top. The same anchors, as Cartesian vectors, enter the
score head gated by invariant per-atom features, so an isolated atom can be pointed
toward the surface.

Training (:meth:`DiffusionModel.loss`): a mode per structure (``masks.py``), a time
``t ~ U(0, 1)`` per structure, then

- targets: the generated atoms are drawn toward ``pos_relaxed`` by default
  (``target="pos"`` to model initial structures). In ``inpaint`` the given atoms sit at
  their initial ``pos``, never at ``pos_relaxed``: the unrelaxed slab is what a user has
  at sampling time, and the relaxed slab would leak where the adsorbate ends up (its
  surface atoms relax around the adsorbate). The generated atoms' targets are their
  ``pos_relaxed`` expressed on that same cell.
- coordinates: wrapped-normal noise per axis (``coord_noise.py``) on generated atoms;
  given atoms are clean; loss = mean squared error of the normalised score over the
  generated atoms' coordinates (part ``coord``).
- lattice: DDPM noise on the latent of generated lattices (``csp``); given lattices are
  clean; loss = mean squared error of ``eps`` over the 6 independent entries of the
  generated lattices (part ``lattice``).

Placement training (``placement_prob > 0``): in that fraction of the ``inpaint``
structures the noisy state of the generated atoms is not Gaussian noise but a point of
the straight path from their initial placement ``pos`` (the heuristic a relaxation
starts from), taken to be at the time ``T = placement_t``, to ``pos_relaxed`` at 0:

    t ~ U(0, T),   x_t = x_0 + (sigma(t) / sigma(T)) * wrap(pos - x_0)      (per axis)

with the same target as everywhere, the exact wrapped score toward ``x_0`` at
``sigma(t)``. Along that path the score is ``-(x_t - x_0) / sigma^2``, so the
probability-flow ODE (``dx/dsigma = -sigma * score``) started from the placement at
``T`` follows exactly this path: sampling with ``t_start=placement_t, renoise=False``
(``gen.py --no_renoise``) moves a real placement along states the network was trained
on, toward the relaxed structure (a bridge from placements to relaxed structures, in the
score parametrisation of the noise process). The Gaussian states stay the rest of the
mix, so the same checkpoint still generates from noise.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from sfm.data.lattice import as_cells, cart_to_frac, wrap_frac
from sfm.data.structure import SLAB_TAGS
from sfm.models.backbone import BackboneConfig, EquiformerV2
from sfm.models.diffusion.anchors import anchor_displacements
from sfm.models.diffusion.coord_noise import FracProcess
from sfm.models.diffusion.lattice_noise import LatticeProcess, polar_rotation, upper_entries
from sfm.models.diffusion.masks import MODES, Masks, training_masks
from sfm.models.diffusion.wrapped_normal import wrap_delta

DEFAULT_MODE_PROBS = {"csp": 0.25, "lattice_given": 0.25, "inpaint": 0.5}
NUM_ANCHORS = 3  # given atoms, generated atoms, surface atoms (tag 1)


def parse_mode_probs(spec) -> dict[str, float]:
    """``{"csp": 0.25, ...}`` from a dict or a string ``"csp=0.25,inpaint=0.75"``; None: the default mix."""
    if spec is None:
        return dict(DEFAULT_MODE_PROBS)
    if isinstance(spec, str):
        items = [kv.split("=") for kv in spec.split(",") if kv.strip()]
        if any(len(kv) != 2 for kv in items):
            raise ValueError(f"mode_probs string must look like 'csp=0.25,inpaint=0.75', got {spec!r}")
        spec = {k.strip(): float(v) for k, v in items}
    unknown = set(spec) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)} in mode_probs; modes are {MODES}")
    return {m: float(spec.get(m, 0.0)) for m in MODES}


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of ``t`` ``[B]`` in [0, 1] (DDPM's, on ``1000 t``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    arg = 1000.0 * t[:, None] * freqs
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class DiffusionModel(nn.Module):
    """Joint diffusion over fractional coordinates and lattice; see the module doc.

    ``DiffusionModel(backbone_cfg, target="pos_relaxed", mode_probs=None, given_tags=(0, 1),
    sigma_min=0.01, coord_weight=1.0, lattice_weight=1.0, time_dim=64, lattice_channels=8,
    tag_dropout=0.1, pbc=(True, True, True), placement_prob=0.0, placement_t=0.55)``; build it
    with ``build_model(model_type, head="diffusion", **overrides)``. ``cond_dim`` of the backbone config is the conditioning width (0: use
    ``sphere_channels``). Call :meth:`fit_normalizer` on training data before training.
    """

    def __init__(
        self,
        backbone_cfg: BackboneConfig,
        target: str = "pos_relaxed",
        mode_probs=None,
        given_tags=SLAB_TAGS,
        sigma_min: float = 0.01,
        coord_weight: float = 1.0,
        lattice_weight: float = 1.0,
        time_dim: int = 64,
        lattice_channels: int = 8,
        tag_dropout: float = 0.1,
        pbc=(True, True, True),
        placement_prob: float = 0.0,
        placement_t: float = 0.55,
    ):
        super().__init__()
        if target not in ("pos_relaxed", "pos"):
            raise ValueError(f"target must be 'pos_relaxed' or 'pos', got {target!r}")
        if not 0.0 <= placement_prob <= 1.0 or not 0.0 < placement_t < 1.0:
            raise ValueError(
                f"placement_prob must be in [0, 1] and placement_t in (0, 1), got {placement_prob}, {placement_t}"
            )
        if placement_prob > 0 and target != "pos_relaxed":
            raise ValueError("placement training denoises `pos` toward `pos_relaxed`: it needs target='pos_relaxed'")
        self.placement_prob, self.placement_t = float(placement_prob), float(placement_t)
        self.target = target
        self.mode_probs = parse_mode_probs(mode_probs)
        self.given_tags = tuple(int(t) for t in given_tags)
        self.coord_weight, self.lattice_weight = float(coord_weight), float(lattice_weight)
        self.time_dim, self.pbc = int(time_dim), tuple(bool(p) for p in pbc)
        self.tag_dropout = float(tag_dropout)
        width = backbone_cfg.cond_dim or backbone_cfg.sphere_channels
        self.backbone = EquiformerV2(replace(backbone_cfg, cond_dim=width))
        channels = backbone_cfg.sphere_channels
        self.frac_process = FracProcess(sigma_min)
        self.lattice_process = LatticeProcess()
        # conditioning: time embedding, 3 log-sigmas, 6 latent entries, 2 mask channels, 3 tag
        # channels, 3 anchors x (3 fractional displacements, length, present)
        self.cond_mlp = nn.Sequential(nn.Linear(self.time_dim + 29, width), nn.SiLU(), nn.Linear(width, width))
        self.coord_head = self.backbone.make_attention(1)
        self.anchor_gates = nn.Linear(channels, NUM_ANCHORS)
        # lattice head: invariant part (pooled scalars and conditioning, size, latent) and l=1 part
        self.lattice_mlp = nn.Sequential(nn.Linear(channels + width + 7, channels), nn.SiLU(), nn.Linear(channels, 6))
        self.lattice_vectors = nn.Linear(channels, 2 * lattice_channels, bias=False)

    # ---- conditioning and heads -------------------------------------------------------

    def condition(self, t, sigma, latent, masks: Masks, batch, anchors) -> torch.Tensor:
        """Per-atom conditioning ``[N, W]`` from ``t`` ``[B]``, ``sigma`` ``[B, 3]``, ``latent``
        ``[B, 6]``, the masks and ``anchors = (dfrac [N, 3, 3], dcart [N, 3, 3], count [N, 3])``."""
        graph_feats = torch.cat([time_embedding(t, self.time_dim), sigma.log() / 4.0, latent], dim=-1)[batch]
        tags = torch.stack([masks.tags == k for k in range(3)], dim=-1)  # unknown (-1): all zero
        flags = torch.cat([torch.stack([masks.atom_given, masks.lattice_given[batch]], dim=-1), tags], -1).to(t.dtype)
        dfrac, dcart, count = anchors
        anchor_feats = torch.cat([dfrac.flatten(1), dcart.norm(dim=-1) / 10.0, (count > 0).to(t.dtype)], dim=-1)
        return self.cond_mlp(torch.cat([graph_feats, flags, anchor_feats], dim=-1))

    def forward(self, atomic_numbers, frac, lattice, batch, t, sigma, masks: Masks, latent=None) -> dict:
        """Network outputs at one noisy state.

        ``atomic_numbers [N]``, ``frac [N, 3]``, ``lattice [B, 3, 3]`` (noisy or given),
        ``batch [N]``, ``t [B]``, ``sigma [B, 3]`` fractional noise per axis, ``masks``;
        ``latent [B, 3, 3]``: the lattice process state ``Z`` of ``lattice`` when the caller
        holds it (training and the samplers do), so it is not re-encoded from ``lattice``
        (None: ``encode(lattice)``).
        Returns ``coord [N, 3]`` (normalised fractional score), ``lattice_eps [B, 3, 3]``
        (noise of the lattice latent, symmetric, rotation invariant), ``lattice_tensor
        [B, 3, 3]`` (``T``, Cartesian), ``lattice_noise [B, 3, 3]`` (``eps Q``: the noise
        in the input lattice's frame, rotating with it).
        """
        z = self.lattice_process.encode(lattice) if latent is None else latent
        latent = upper_entries(z).clamp(-10, 10)
        groups = torch.stack([masks.atom_given, ~masks.atom_given, masks.tags == 1], -1)
        dfrac, count = anchor_displacements(frac, batch, groups)
        dcart = dfrac @ lattice[batch]  # [N, 3, 3]
        cond = self.condition(t, sigma, latent, masks, batch, (dfrac, dcart, count))
        x, graph = self.backbone.encode(atomic_numbers, frac, lattice, batch, cond, self.pbc)
        unit = lattice / lattice.norm(dim=-1, keepdim=True)  # [B, 3, 3] unit rows
        gates = self.anchor_gates(EquiformerV2.scalars(x))  # [N, 3] invariant
        v = self.coord_head(x, graph)[:, 1:4, 0] + (gates[:, :, None] * dcart / 10.0).sum(1)  # [N, 3] Cartesian
        coord = (unit[batch] @ v[:, :, None]).squeeze(-1)
        tensor = self.lattice_tensor(x, cond, latent, unit, batch)
        rot = polar_rotation(lattice)
        eps = rot @ tensor @ rot.transpose(-1, -2)
        return {"coord": coord, "lattice_eps": eps, "lattice_tensor": tensor, "lattice_noise": eps @ rot}

    def lattice_tensor(self, x, cond, latent, unit, batch) -> torch.Tensor:
        """``T = A^T M A + mean_n sum_k sym(u_nk w_nk^T)`` ``[B, 3, 3]``, see the module doc."""
        num_graphs = unit.shape[0]
        count = torch.zeros(num_graphs, dtype=x.dtype, device=x.device).index_add_(
            0, batch, torch.ones_like(batch, dtype=x.dtype)
        )

        def pool(feats):  # mean over the atoms of each structure (in x's dtype: under bf16 autocast, heads give bf16)
            feats = feats.to(x.dtype)
            total = torch.zeros(num_graphs, *feats.shape[1:], dtype=x.dtype, device=x.device).index_add_(
                0, batch, feats
            )
            return total / count.view(-1, *[1] * (feats.dim() - 1))

        invariants = torch.cat([pool(EquiformerV2.scalars(x)), pool(cond), latent, count.log()[:, None]], -1)
        i, j = torch.triu_indices(3, 3, device=x.device)
        m = torch.zeros(num_graphs, 3, 3, dtype=x.dtype, device=x.device)
        m[:, i, j] = self.lattice_mlp(invariants).to(x.dtype)
        m = m + torch.triu(m, 1).transpose(-1, -2)
        u, w = self.lattice_vectors(EquiformerV2.vectors(x)).chunk(2, dim=-1)  # [N, 3, K] each
        outer = pool(u @ w.transpose(-1, -2))  # [B, 3, 3]
        return unit.transpose(-1, -2) @ m @ unit + 0.5 * (outer + outer.transpose(-1, -2))

    def predict(self, atomic_numbers, frac, lattice, batch, t, sigma, masks: Masks, latent=None):
        """``(coord [N, 3], lattice_eps [B, 3, 3])``: what the samplers call (``latent``: see forward)."""
        out = self(atomic_numbers, frac, lattice, batch, t, sigma, masks, latent)
        return out["coord"], out["lattice_eps"]

    # ---- training ---------------------------------------------------------------------

    def loss(self, batch):
        """``(loss, parts)`` with parts ``coord``, ``lattice`` (detached) and ``loss``; see the module doc."""
        numbers = batch.atomic_numbers.long()
        pos = batch.pos
        cell = batch.cell.to(pos.dtype)
        index = batch.batch
        target_pos = getattr(batch, self.target, None)
        if target_pos is None:
            raise ValueError(
                f"the batch has no `{self.target}` (the diffusion target); pass target='pos' to train on initial structures"
            )
        masks = training_masks(batch, self.mode_probs, self.given_tags, self.tag_dropout)
        x_init = batch.frac.to(pos.dtype)
        x_target = wrap_frac(cart_to_frac(target_pos.to(pos.dtype), cell[index]))
        given = masks.atom_given[:, None]
        x0 = torch.where(given, x_init, x_target)

        t = torch.rand(batch.num_graphs, dtype=pos.dtype, device=pos.device)
        placed = self.placement_structures(masks, index)
        t = torch.where(placed, t * self.placement_t, t)
        lengths = self.frac_process.axis_lengths(cell, masks.lattice_given)
        sigma = self.frac_process.sigma(t, lengths)
        xt, coord_target = self.frac_process.add_noise(x0, sigma[index])
        if placed.any():  # a point of the path from the placement to x0 (module doc)
            ratio = (sigma / self.frac_process.sigma(torch.full_like(t, self.placement_t), lengths))[index]
            on_path = wrap_frac(x0 + ratio * wrap_delta(x_init - x0))
            at = placed[index][:, None]
            xt = torch.where(at, on_path, xt)
            coord_target = torch.where(at, self.frac_process.score_target(on_path, x0, sigma[index]), coord_target)
        xt = torch.where(given, x0, xt)
        z0 = self.lattice_process.encode(cell)
        zt, eps = self.lattice_process.add_noise(z0, t)
        lattice_given = masks.lattice_given[:, None, None]
        lattice_in = torch.where(lattice_given, cell, self.lattice_process.decode(zt))

        out = self(numbers, xt, lattice_in, index, t, sigma, masks, latent=torch.where(lattice_given, z0, zt))
        free = (~given).to(pos.dtype)
        coord_loss = ((out["coord"] - coord_target) ** 2 * free).sum() / (3 * free.sum()).clamp(min=1)
        gen = (~masks.lattice_given).to(pos.dtype)
        lat_err = upper_entries((out["lattice_eps"] - eps) ** 2).mean(-1)
        lattice_loss = (lat_err * gen).sum() / gen.sum().clamp(min=1)
        loss = self.coord_weight * coord_loss + self.lattice_weight * lattice_loss
        return loss, {"coord": coord_loss.detach(), "lattice": lattice_loss.detach(), "loss": loss.detach()}

    def placement_structures(self, masks: Masks, index) -> torch.Tensor:
        """``[B]`` bool: the inpaint structures trained on the path from their placement (``placement_prob``)."""
        num_graphs = masks.lattice_given.shape[0]
        inpaint = torch.zeros(num_graphs, dtype=torch.bool, device=index.device)
        if self.placement_prob == 0:
            return inpaint
        inpaint.index_fill_(0, index[masks.atom_given], True)
        return inpaint & (torch.rand(num_graphs, device=index.device) < self.placement_prob)

    @torch.no_grad()
    def fit_normalizer(self, dataset_or_batches) -> dict:
        """Fit the lattice prior and reference axis lengths on training structures (``cell``)."""
        cells = torch.cat([as_cells(item.cell).double() for item in dataset_or_batches])
        self.lattice_process.fit(cells)
        self.frac_process.fit(cells)
        return {
            "lattice_mean": self.lattice_process.mean.tolist(),
            "lattice_std": self.lattice_process.std.tolist(),
            "ref_lengths": self.frac_process.ref_lengths.tolist(),
            "num_structures": len(cells),
        }

    # ---- sampling ---------------------------------------------------------------------

    def sample(self, batch, mode: str = "csp", sampler: str = "pc", steps: int | None = None, **kwargs):
        """``samplers.sample(self, batch, mode, sampler, steps, ...)`` (eval mode, no grad)."""
        from sfm.models.diffusion.samplers import sample

        return sample(self, batch, mode, sampler, steps, **kwargs)
