"""Energy and force normaliser, stored in buffers so that checkpoints carry it."""

from __future__ import annotations

import torch
from torch import nn

from sfm.data.structure import fixed_mask, name_structures

NUM_ELEMENTS = 119  # index by atomic number Z (0 unused)


class EnergyNormalizer(nn.Module):
    """``E = std * e + mean + sum_i ref[Z_i]`` and ``F = force_std * f``.

    ``e`` and ``f`` are what the network predicts (order-one numbers); ``E`` (eV) and
    ``F`` (eV/A) are physical. ``ref [119]`` are per-element linear references (zero if
    not fitted). Defaults are the identity.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("std", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("force_std", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("element_refs", torch.zeros(NUM_ELEMENTS, dtype=torch.float64))

    def _apply(self, fn, recurse=True):
        # follow device moves but stay float64 under .float()/.half()/.bfloat16():
        # references of hundreds of eV would lose whole eV in low precision
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def reference(self, atomic_numbers: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        """``[B]``: ``mean + sum_i ref[Z_i]`` per structure (float64)."""
        refs = self.element_refs[atomic_numbers.long()]
        return refs.new_zeros(num_graphs).index_add_(0, batch, refs) + self.mean

    def energy(self, e: torch.Tensor, atomic_numbers, batch) -> torch.Tensor:
        """Physical energies ``[B]`` (eV) of normalised ``e [B]``, in ``e``'s dtype."""
        return (e.double() * self.std + self.reference(atomic_numbers, batch, e.shape[0])).to(e.dtype)

    def normalize_energy(self, energy: torch.Tensor, atomic_numbers, batch) -> torch.Tensor:
        """Inverse of :meth:`energy`."""
        ref = self.reference(atomic_numbers, batch, energy.shape[0])
        return ((energy.double() - ref) / self.std).to(energy.dtype)

    @torch.no_grad()
    def fit(self, batches, fit_references: bool = True, ridge: float = 1e-6) -> dict:
        """Set the buffers from an iterable of structures or batches (PyG ``Data``/``Batch``
        with ``atomic_numbers``, ``y``, optionally ``force`` and ``fixed``/``tags``).

        References: least squares ``y ~ counts @ ref`` over the elements present (small
        ridge). Then ``mean``, ``std`` of the residual energies; ``force_std`` the RMS
        force component on free atoms (``std`` if there are no forces).
        Returns the fitted values as a dict.
        """
        counts, energies, force_sq, force_n = [], [], 0.0, 0
        for item in batches:
            z = item.atomic_numbers.long().reshape(-1)
            graph = getattr(item, "batch", None)
            if graph is None:  # a single structure
                graph = torch.zeros_like(z)
            num = int(graph.max()) + 1 if len(graph) else 0
            c = torch.zeros(num, NUM_ELEMENTS, dtype=torch.float64)
            c.index_put_((graph, z), torch.ones(len(z), dtype=torch.float64), accumulate=True)
            counts.append(c)
            energies.append(torch.as_tensor(item.y, dtype=torch.float64).reshape(-1))
            if not torch.isfinite(energies[-1]).all():
                bad = (~torch.isfinite(energies[-1])).nonzero().flatten()
                raise ValueError(
                    f"normaliser fit: non-finite energy label y in item {len(energies) - 1} of the "
                    f"fitted data ({name_structures(item, bad)})"
                )
            if getattr(item, "force", None) is not None:
                free_mask = ~fixed_mask(item)
                if not torch.isfinite(item.force[free_mask]).all():
                    bad = graph[free_mask & ~torch.isfinite(item.force).all(-1)].unique()
                    raise ValueError(
                        f"normaliser fit: non-finite force label on a free atom in item "
                        f"{len(energies) - 1} of the fitted data ({name_structures(item, bad)})"
                    )
                free = item.force.double()[free_mask]
                force_sq += float(free.pow(2).sum())
                force_n += free.numel()
        counts, energies = torch.cat(counts), torch.cat(energies)
        refs = torch.zeros(NUM_ELEMENTS, dtype=torch.float64)
        if fit_references:
            present = counts.sum(0) > 0
            a = counts[:, present]
            lhs = a.T @ a + ridge * torch.eye(a.shape[1], dtype=torch.float64)
            refs[present] = torch.linalg.solve(lhs, a.T @ energies)
        residual = energies - counts @ refs
        self.element_refs.copy_(refs)
        self.mean.fill_(residual.mean())
        self.std.fill_(residual.std().clamp_min(1e-6) if len(residual) > 1 else 1.0)
        self.force_std.fill_((force_sq / force_n) ** 0.5 if force_n else float(self.std))
        return {
            "mean": float(self.mean),
            "std": float(self.std),
            "force_std": float(self.force_std),
            "element_refs": {int(z): float(refs[z]) for z in torch.nonzero(refs).flatten()},
        }
