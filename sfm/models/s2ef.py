"""Energy and forces (S2EF) on the EquiformerV2 backbone.

- Energy: an MLP of each atom's invariant features (``Linear - SiLU - Linear``, the l=0
  path of EquiformerV2's energy block, whose l>0 outputs it discards) gives one number;
  the sum over atoms, divided by ``avg_num_atoms`` (77.81 on OC20, as EquiformerV2; new
  training runs of ``train_s2ef`` use 1, which lets a few atoms carry the energy change), is
  the normalised energy ``e``; physical ``E = std * e + mean + sum_i ref[Z_i]``
  (:class:`~sfm.models.normalizer.EnergyNormalizer`, buffers in the state dict).
- Energy branch (``energy_branch=K``, 0 by default): the energy reads its own copy of the trunk's
  last K blocks (and final norm), fed by the trunk's state before them, instead of the trunk's
  output. :meth:`S2EFModel.start_energy_branch` copies the trunk's blocks into it and freezes all
  else, so a fine-tuning trains the energy alone and the weights the forces use stay as they were.
- Forces ``"direct"`` (EquiformerV2's default): the l=1 output of one more attention
  layer, times ``force_std``; fast, not conservative. ``"conservative"``: ``-dE/dpos``
  by autograd (graph kept in training), and optionally the stress ``(1/V) dE/d(strain)``.
- Loss: ``energy_coef * |e - e_target|`` (mean over structures; ``energy_loss="mse"``: the
  mean of ``(e - e_target)^2``, which pulls hardest on the frames furthest off) ``+ force_coef *
  ||F - F_target|| / force_std`` (L2 norm per atom, mean over free atoms).

Batches are PyG ``Batch``/``Data`` with ``atomic_numbers [N]``, ``pos [N, 3]`` (A),
``cell [B, 3, 3]``, ``batch [N]``, and for the loss ``y [B]`` (eV), ``force [N, 3]``
(optional: without it the loss is energy only), ``fixed [N]`` bool.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from ase.data import chemical_symbols
from torch import nn

from sfm.data.lattice import as_cells, cart_to_frac
from sfm.data.structure import ADSORBATE_TAG, fixed_mask, name_structures
from sfm.models.backbone import BackboneConfig, EquiformerV2
from sfm.models.layer_norm import EquivariantLayerNormSH
from sfm.models.normalizer import EnergyNormalizer

OC20_AVG_NUM_ATOMS = 77.81317
ENERGY_LOSSES = ("mae", "mse")  # of the normalised energy per structure
ENERGY_BRANCH = ("energy_blocks.", "energy_norm.", "energy_head.")  # what an energy-branch fine-tuning trains


def batch_tensors(batch):
    """``(atomic_numbers [N], pos [N, 3], cell [B, 3, 3], batch [N])`` of a PyG Batch or Data."""
    pos = batch.pos
    index = getattr(batch, "batch", None)
    if index is None:
        index = torch.zeros(len(pos), dtype=torch.long, device=pos.device)
    return batch.atomic_numbers.long(), pos, as_cells(batch.cell).to(pos.dtype), index


class S2EFModel(nn.Module):
    """``forward(atomic_numbers, pos, cell, batch, forces=True, stress=False) -> dict`` with
    ``energy [B]`` (eV), ``energy_norm [B]``, ``forces [N, 3]`` (eV/A) and, conservative
    only, ``stress [B, 3, 3]`` (eV/A^3, ASE sign). ``predict(batch)`` and ``loss(batch)``
    take PyG batches.
    """

    def __init__(
        self,
        backbone_cfg: BackboneConfig,
        forces: str = "direct",
        energy_coef: float = 4.0,
        force_coef: float = 100.0,
        avg_num_atoms: float = OC20_AVG_NUM_ATOMS,
        pbc: tuple = (True, True, True),
        adsorbate_force_weight: float = 1.0,
        energy_loss: str = "mae",
        energy_branch: int = 0,
    ):
        super().__init__()
        if forces not in ("direct", "conservative"):
            raise ValueError(f"forces must be 'direct' or 'conservative', got {forces!r}")
        if energy_loss not in ENERGY_LOSSES:
            raise ValueError(f"energy_loss must be one of {ENERGY_LOSSES}, got {energy_loss!r}")
        if not adsorbate_force_weight > 0:
            raise ValueError(f"adsorbate_force_weight must be > 0, got {adsorbate_force_weight}")
        self.forces_mode, self.energy_coef, self.force_coef = forces, float(energy_coef), float(force_coef)
        self.adsorbate_force_weight, self.energy_loss = float(adsorbate_force_weight), energy_loss
        self.avg_num_atoms, self.pbc = float(avg_num_atoms), tuple(bool(p) for p in pbc)
        if not 0 <= energy_branch <= backbone_cfg.num_layers:
            raise ValueError(
                f"energy_branch must be 0..{backbone_cfg.num_layers} (the trunk's blocks), got {energy_branch}"
            )
        if energy_branch and forces == "conservative":
            raise ValueError("energy_branch needs direct forces (conservative forces are the energy's gradient)")
        self.backbone = EquiformerV2(backbone_cfg)
        self.energy_blocks = (
            nn.ModuleList(self.backbone.make_block() for _ in range(energy_branch)) if energy_branch else None
        )
        self.energy_norm = (
            EquivariantLayerNormSH(backbone_cfg.lmax, backbone_cfg.sphere_channels) if energy_branch else None
        )
        channels, hidden = backbone_cfg.sphere_channels, backbone_cfg.ffn_hidden_channels
        self.energy_head = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.force_head = self.backbone.make_attention(1) if forces == "direct" else None
        self.normalizer = EnergyNormalizer()
        self._warned_elements: set[int] = set()

    def forward(self, atomic_numbers, pos, cell, batch, forces: bool = True, stress: bool = False, edges=None) -> dict:
        conservative = self.forces_mode == "conservative" and (forces or stress)
        if stress and not conservative:
            raise ValueError("stress needs forces='conservative'")
        with torch.enable_grad() if conservative else contextlib.nullcontext():
            if conservative:
                pos = pos if pos.requires_grad else pos.detach().requires_grad_(True)
            strain = torch.zeros_like(cell, requires_grad=True) if stress else None
            lattice = cell + cell @ strain if stress else cell
            frac = cart_to_frac(pos, cell[batch])  # strain moves atoms with the cell: frac fixed
            x, x_energy, graph = self.encode(atomic_numbers, frac, lattice, batch, edges)
            per_atom = self.energy_head(self.backbone.scalars(x_energy))[:, 0]
            e_norm = per_atom.new_zeros(cell.shape[0]).index_add_(0, batch, per_atom) / self.avg_num_atoms
            out = {"energy_norm": e_norm, "energy": self.normalizer.energy(e_norm, atomic_numbers, batch)}
            if conservative:
                inputs = [pos] + ([strain] if stress else [])
                grads = torch.autograd.grad(out["energy"].sum(), inputs, create_graph=self.training)
                out["forces"] = -grads[0]
                if stress:
                    volume = torch.linalg.det(cell).abs()[:, None, None]
                    out["stress"] = 0.5 * (grads[1] + grads[1].transpose(1, 2)) / volume
            elif forces:
                out["forces"] = self.force_head(x, graph)[:, 1:4, 0] * self.normalizer.force_std.to(x.dtype)
        return out

    def encode(self, atomic_numbers, frac, lattice, batch, edges=None):
        """``(x, x_energy, graph)``: the trunk's features, those the energy reads (the same tensor
        without an energy branch), and the graph."""
        bb = self.backbone
        if self.energy_blocks is None:
            x, graph = bb.encode(atomic_numbers, frac, lattice, batch, pbc=self.pbc, edges=edges)
            return x, x, graph
        h, graph, _ = bb.embed(atomic_numbers, frac, lattice, batch, pbc=self.pbc, edges=edges)
        k = len(self.energy_blocks)  # 1..num_layers: the trunk's last k blocks run twice, once for each
        h = bb.run(bb.blocks[:-k], h, graph)
        x = bb.norm(bb.run(bb.blocks[-k:], h, graph))
        return x, self.energy_norm(bb.run(self.energy_blocks, h, graph)), graph

    def start_energy_branch(self, copy: bool = True) -> None:
        """Train the energy branch alone: with ``copy``, its blocks and norm become copies of the
        trunk's last ones (the energies start where the trunk's were); every parameter outside the
        branch and the energy readout is frozen, so the forces cannot change."""
        if self.energy_blocks is None:
            raise ValueError("this model has no energy branch (build it with energy_branch=K)")
        if copy:
            for ours, theirs in zip(self.energy_blocks, self.backbone.blocks[-len(self.energy_blocks) :]):
                ours.load_state_dict(theirs.state_dict())
            self.energy_norm.load_state_dict(self.backbone.norm.state_dict())
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith(ENERGY_BRANCH))

    @torch.no_grad()
    def predict(self, batch, stress: bool = False, edges=None) -> dict:
        """Inference: ``energy [B]`` (eV), ``forces [N, 3]`` (eV/A) [, ``stress [B, 3, 3]``], detached.

        ``edges``: the graph at these positions, if already found (see ``EquiformerV2.build_graph``).
        ValueError naming the structures if a prediction is not finite (nothing downstream
        can use it: an eval would print "MAE nan", a ranking would order nothing).
        """
        atomic_numbers, pos, cell, index = batch_tensors(batch)
        self._warn_untrained_elements(atomic_numbers)
        out = self(atomic_numbers, pos, cell, index, forces=True, stress=stress, edges=edges)
        out = {k: out[k].detach() for k in ("energy", "forces", "stress") if k in out}
        bad = ~torch.isfinite(out["energy"])
        bad[index[~torch.isfinite(out["forces"]).all(-1)]] = True
        if bad.any():
            self._refuse_nonfinite(batch, bad.nonzero().flatten().cpu())
        return out

    def trained_elements(self) -> torch.Tensor | None:
        """``[119]`` bool: the elements of the training data, those whose per-element reference the
        normaliser fitted (a fitted reference is never exactly 0); None when no reference was fitted."""
        refs = self.normalizer.element_refs
        return refs != 0 if refs.any() else None

    def _warn_untrained_elements(self, atomic_numbers: torch.Tensor) -> None:
        """A warning, once per element and model, for an element the model was not trained on: its
        embedding is where initialisation left it, so its energies are noise summed over its atoms."""
        trained = self.trained_elements()
        if trained is None:
            return
        new = {int(z) for z in atomic_numbers[~trained[atomic_numbers]].unique()} - self._warned_elements
        if new:
            self._warned_elements |= new
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in sorted(new))
            warnings.warn(
                f"{names}: not in this model's training data; energies and forces of structures "
                "holding it are extrapolation from an untrained embedding, not to be trusted",
                stacklevel=4,  # the caller of predict (through no_grad's wrapper)
            )

    def _refuse_nonfinite(self, batch, graphs: torch.Tensor) -> None:
        norm = self.normalizer
        buffers = {"mean": norm.mean, "std": norm.std, "force_std": norm.force_std, "element_refs": norm.element_refs}
        broken = [name for name, value in buffers.items() if not torch.isfinite(value).all()]
        why = (
            f"its normaliser holds non-finite {', '.join(broken)} (fitted on non-finite labels): retrain it"
            if broken
            else "the checkpoint's weights or the input are broken"
        )
        raise ValueError(
            f"the model predicts a non-finite energy or force for {len(graphs)} structure(s) "
            f"({name_structures(batch, graphs[:10])}): {why}"
        )

    def loss(self, batch):
        """``(loss, parts)``: weighted energy + force loss, and its parts (detached) incl. MAEs."""
        atomic_numbers, pos, cell, index = batch_tensors(batch)
        target_force = getattr(batch, "force", None)
        out = self(atomic_numbers, pos, cell, index, forces=target_force is not None)
        target = self.normalizer.normalize_energy(batch.y.reshape(-1).to(pos.dtype), atomic_numbers, index)
        e_err = out["energy_norm"] - target
        energy_loss = e_err.abs().mean() if self.energy_loss == "mae" else e_err.square().mean()
        parts = {"energy_loss": energy_loss, "energy_mae": e_err.abs().mean() * self.normalizer.std.to(pos.dtype)}
        loss = self.energy_coef * energy_loss
        if target_force is not None:
            free = ~fixed_mask(batch)
            f_err = (out["forces"] - target_force.to(pos.dtype))[free]
            norm = f_err.norm(dim=-1) / self.normalizer.force_std.to(pos.dtype)
            # a weighted mean over free atoms: adsorbate atoms count adsorbate_force_weight times
            tags = getattr(batch, "tags", None)
            ads = torch.zeros_like(free) if tags is None else tags == ADSORBATE_TAG
            weight = torch.where(ads[free], self.adsorbate_force_weight, 1.0).to(norm.dtype)
            force_loss = (norm * weight).sum() / weight.sum() if len(norm) else norm.sum()
            loss = loss + self.force_coef * force_loss
            parts.update(force_loss=force_loss, force_mae=f_err.abs().mean() if len(norm) else norm.sum())
        parts = {k: v.detach() for k, v in parts.items()}
        parts["loss"] = loss.detach()
        return loss, parts

    def fit_normalizer(self, dataset_or_batches, fit_references: bool = True) -> dict:
        """Fit mean, std, per-element references and force scale on training data."""
        return self.normalizer.fit(dataset_or_batches, fit_references)
