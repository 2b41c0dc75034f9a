"""A periodic radius graph reused while atoms move a little (a Verlet list with a skin).

In a relaxation or MD run the positions change by a fraction of an Angstrom per step and
the cell is held. :class:`SkinNeighborList` searches the pairs within ``cutoff + skin``
once (:func:`~sfm.data.pbc_graph.radius_graph_pbc`), then each call keeps those now closer
than ``cutoff`` and applies the neighbour cap (:func:`~sfm.data.pbc_graph.cap_neighbors`):
the same edges ``radius_graph_pbc`` would find at the current positions (same cutoff, same
cap rule), as long as no atom has moved more than ``skin / 2`` since the search, when the
search is done again. Edge order differs from ``radius_graph_pbc``'s (same edges, same
offsets).

Offsets are image shifts for the ``frac`` passed in, so the caller passes continuous
(unwrapped) fractional coordinates, e.g. ``cart_to_frac(pos, cell)`` as the S2EF model does.
"""

from __future__ import annotations

import torch

from sfm.data.pbc_graph import cap_neighbors, edge_vectors, radius_graph_pbc


class SkinNeighborList:
    """``nl(frac [N, 3], lattice [B, 3, 3], batch [N]) -> (edge_index [2, E], offsets [E, 3])``.

    ``cutoff``, ``max_neighbors``, ``pbc``: as :func:`radius_graph_pbc`. ``skin`` (A): the
    margin of the candidate search. ``keep(atom_mask)`` drops atoms (whole structures, as
    when relaxed structures leave a batch) without a new search. ``searches`` counts the
    candidate searches so far.
    """

    def __init__(
        self,
        cutoff: float,
        max_neighbors: int | None = None,
        pbc=(True, True, True),
        skin: float = 1.0,
    ):
        if not skin > 0:
            raise ValueError(f"skin must be positive, got {skin}")
        self.cutoff, self.max_neighbors, self.pbc, self.skin = (
            cutoff,
            max_neighbors,
            tuple(pbc),
            skin,
        )
        self.searches = 0
        self._ref = None  # (frac [N, 3], lattice [B, 3, 3], batch [N]) of the last search
        self._edges = None  # candidates: (edge_index [2, C], offsets [C, 3])

    def _moved_too_far(self, frac, lattice, batch) -> bool:
        ref_frac, ref_lattice, ref_batch = self._ref
        if ref_frac.shape != frac.shape or not torch.equal(ref_batch, batch) or not torch.equal(ref_lattice, lattice):
            return True
        step = torch.einsum("nk,nkl->nl", frac - ref_frac, lattice[batch])  # Cartesian displacement, A
        return bool(step.pow(2).sum(-1).max() > (self.skin / 2) ** 2) if len(step) else False

    @torch.no_grad()
    def __call__(self, frac: torch.Tensor, lattice: torch.Tensor, batch: torch.Tensor):
        frac, lattice = frac.detach(), lattice.detach().to(frac.dtype)
        if self._ref is None or self._moved_too_far(frac, lattice, batch):
            self._edges = radius_graph_pbc(frac, lattice, batch, self.cutoff + self.skin, None, self.pbc)
            self._ref = (frac.clone(), lattice.clone(), batch.clone())
            self.searches += 1
        edge_index, offsets = self._edges
        distance = edge_vectors(frac, lattice, batch, edge_index, offsets).norm(dim=-1)
        inside = distance < self.cutoff
        if self.max_neighbors is not None:
            inside[inside.clone()] = cap_neighbors(distance[inside], edge_index[1, inside], self.max_neighbors)
        return edge_index[:, inside], offsets[inside]

    def keep(self, atom_mask: torch.Tensor) -> None:
        """Keep only the atoms where ``atom_mask [N]`` is True (renumbered in order); the
        dropped atoms must be whole structures, so no kept atom loses a neighbour."""
        if self._ref is None:
            return
        ref_frac, ref_lattice, ref_batch = self._ref
        graphs_kept = torch.zeros(ref_lattice.shape[0], dtype=torch.bool, device=atom_mask.device)
        graphs_kept[ref_batch[atom_mask]] = True
        new_index = torch.cumsum(atom_mask, 0) - 1  # old atom -> new atom
        new_graph = torch.cumsum(graphs_kept, 0) - 1
        edge_index, offsets = self._edges
        edges_kept = atom_mask[edge_index[1]]
        self._edges = new_index[edge_index[:, edges_kept]], offsets[edges_kept]
        self._ref = (
            ref_frac[atom_mask],
            ref_lattice[graphs_kept],
            new_graph[ref_batch[atom_mask]],
        )
