"""Periodic radius graphs built on the fly from fractional coordinates and lattices.

Lattice convention as in :mod:`sfm.data.lattice` (rows = lattice vectors, A). An edge
``e = (j -> i)`` with integer image offset ``o_e`` (``[3]``, stored as float) stands for

    vec_e = (frac[j] + o_e - frac[i]) @ lattice[batch[i]]        (A)

``edge_index[0]`` is the source ``j`` (neighbour), ``edge_index[1]`` the target ``i``
(centre). This holds for whatever ``frac`` is passed, wrapped or not, so the same graph
stays valid while a model differentiates through ``frac`` and ``lattice``.
"""

from __future__ import annotations

import itertools
import math

import torch

_MAX_CHUNK = 1 << 21  # pair-image candidates held in memory at once (~25 MB in float32)
_MAX_IMAGES = 50_000  # more means a degenerate cell (a plane spacing far below the cutoff)
# a neighbour this close (A) to the last one kept is kept too: fairchem's default, so that a
# shell of equal distances is taken whole instead of cut by an arbitrary tie-break
CAP_TOLERANCE = 0.01


@torch.no_grad()
def radius_graph_pbc(
    frac: torch.Tensor,
    lattice: torch.Tensor,
    batch: torch.Tensor,
    cutoff: float,
    max_neighbors: int | None = None,
    pbc: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs ``(j, i)`` and periodic images closer than ``cutoff`` (A), per graph.

    Args:
        frac: ``[N, 3]`` fractional coordinates (any range).
        lattice: ``[B, 3, 3]`` one cell per graph, rows = lattice vectors (A).
        batch: ``[N]`` long, graph index of each atom.
        cutoff: radius in A; an edge has ``|vec| < cutoff``.
        max_neighbors: if set, keep the nearest ``max_neighbors`` sources per target and
            every further one within ``CAP_TOLERANCE`` of the k-th distance (see
            :func:`cap_neighbors`): a degenerate shell is kept whole, so the graph does not
            depend on the orientation, the atom order or the cell choice.
        pbc: periodicity of axes a, b, c. On a periodic axis every image inside the
            cutoff is found: ``ceil(cutoff / h_k)`` images each side, ``h_k`` the spacing
            of the lattice planes (small cells get several). A non-periodic axis gets none.

    Returns:
        ``edge_index [2, E]`` long (row 0 source j, row 1 target i; grouped by target) and
        ``offsets [E, 3]`` (whole numbers, ``frac``'s dtype). No self-edge with zero offset;
        an atom does neighbour its own periodic images.
    """
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    bad_atoms, bad_cells = ~torch.isfinite(frac).all(-1), ~torch.isfinite(lattice).flatten(1).all(-1)
    if bad_atoms.any() or bad_cells.any():  # else the image search fails with an IndexError
        graphs = sorted(set(batch[bad_atoms].tolist()) | set(bad_cells.nonzero().flatten().tolist()))
        raise ValueError(
            f"radius_graph_pbc: non-finite positions or lattice in structure(s) {graphs[:10]} of the "
            "batch (graph index)"
        )
    lattice = lattice.to(frac.dtype)
    periodic = torch.tensor(pbc, dtype=torch.bool, device=frac.device)
    shift = torch.where(periodic, torch.floor(frac), torch.zeros_like(frac))
    wrapped = frac - shift  # periodic axes in [0, 1); the search works on these
    counts = torch.bincount(batch, minlength=lattice.shape[0]).tolist()
    sources, targets, offsets = [], [], []
    start = 0
    for graph, n in enumerate(counts):
        if n:
            src, dst, off = _graph_edges(wrapped[start : start + n], lattice[graph], cutoff, pbc, max_neighbors, graph)
            sources.append(src + start)
            targets.append(dst + start)
            offsets.append(off)
        start += n
    if not sources:
        return torch.zeros(2, 0, dtype=torch.long, device=frac.device), frac.new_zeros(0, 3)
    src, dst, off = torch.cat(sources), torch.cat(targets), torch.cat(offsets)
    # the search saw frac - shift; re-express offsets for the frac that was passed in
    return torch.stack([src, dst]), off - shift[src] + shift[dst]


def _graph_edges(frac, lattice, cutoff, pbc, max_neighbors, graph):
    """Edges of one graph: ``frac [n, 3]``, ``lattice [3, 3]`` -> (src [E], dst [E], offsets [E, 3])."""
    n = frac.shape[0]
    # spacing of the lattice planes spanned by the two other vectors: volume / |a_j x a_k|
    areas = torch.linalg.cross(lattice[[1, 2, 0]], lattice[[2, 0, 1]]).norm(dim=-1)
    spacing = (torch.linalg.det(lattice).abs() / areas).tolist()  # [3], A
    if (
        not all(math.isfinite(h) and h > 0 for h in spacing)
        or math.prod(2 * math.ceil(cutoff / h) + 1 for h, p in zip(spacing, pbc) if p) > _MAX_IMAGES
    ):
        raise ValueError(
            f"graph {graph}: lattice {lattice.tolist()} is degenerate for cutoff {cutoff} A "
            f"(plane spacings {spacing} A would need over {_MAX_IMAGES} periodic images)"
        )
    reach = [math.ceil(cutoff / h) if p else 0 for h, p in zip(spacing, pbc)]
    images = torch.tensor(
        list(itertools.product(*(range(-k, k + 1) for k in reach))), dtype=frac.dtype, device=frac.device
    )
    num_images = images.shape[0]
    zero_image = num_images // 2  # the product over symmetric ranges puts (0, 0, 0) in the middle
    cart = frac @ lattice  # [n, 3]
    candidates = (cart[:, None, :] + (images @ lattice)[None]).reshape(n * num_images, 3)  # source j, image m
    # only candidates within the cutoff of the targets' bounding box can be neighbours
    low, high = cart.min(0).values, cart.max(0).values
    gap = (low - candidates).clamp(min=0) + (candidates - high).clamp(min=0)
    cand_ids = torch.nonzero(gap.pow(2).sum(-1) < cutoff**2).flatten()
    # centred coordinates keep |t|^2 + |c|^2 - 2 t.c accurate; a margin covers its round-off
    center = cart.mean(0)
    targets, candidates = cart - center, candidates[cand_ids] - center
    sq_t, sq_c = targets.pow(2).sum(-1), candidates.pow(2).sum(-1)
    loose = cutoff**2 + 32 * torch.finfo(frac.dtype).eps * torch.cat([sq_t, sq_c]).max()
    column = torch.full((n * num_images,), -1, dtype=torch.long, device=frac.device)
    column[cand_ids] = torch.arange(cand_ids.shape[0], device=frac.device)
    self_column = column[torch.arange(n, device=frac.device) * num_images + zero_image]  # own zero image
    chunk = max(1, _MAX_CHUNK // max(1, cand_ids.shape[0]))
    found = []  # (target, candidate id), grouped by target
    for lo in range(0, n, chunk):
        rows = torch.arange(lo, min(lo + chunk, n), device=frac.device)
        d2 = torch.addmm(sq_c[None], targets[rows], candidates.T, alpha=-2) + sq_t[rows, None]  # [rows, C]
        d2[rows - lo, self_column[rows]] = math.inf  # no self-edge at zero offset
        tgt, col = torch.nonzero(d2 < loose, as_tuple=True)
        tgt = tgt + lo
        exact = (candidates[col] - targets[tgt]).pow(2).sum(-1)  # decides the few near the cutoff
        keep = exact < cutoff**2
        if max_neighbors is not None:  # rows are whole targets, so the cap sees every neighbour
            keep[keep.clone()] = cap_neighbors(exact[keep].sqrt(), tgt[keep], max_neighbors)
        found.append((tgt[keep], cand_ids[col[keep]]))
    dst, cand = (torch.cat(parts) for parts in zip(*found))
    return cand // num_images, dst, images[cand % num_images]


def cap_neighbors(
    distance: torch.Tensor, target: torch.Tensor, max_neighbors: int, tolerance: float = CAP_TOLERANCE
) -> torch.Tensor:
    """Which edges a neighbour cap keeps: ``[E]`` bool.

    Per target, the ``max_neighbors`` nearest edges and every edge within ``tolerance`` (A)
    of the last of them. The rule depends on distances only, never on edge order, so equal
    distances (a perfect crystal's shells) are kept or dropped together; a target may get
    more than ``max_neighbors`` edges.

    Args:
        distance: ``[E]`` edge lengths (A).
        target: ``[E]`` long, the target atom of each edge (any order, any ids >= 0).
        max_neighbors: the cap k (>= 1).
    """
    if max_neighbors < 1:
        raise ValueError(f"max_neighbors must be at least 1, got {max_neighbors}")
    if distance.numel() == 0:
        return torch.ones_like(target, dtype=torch.bool)
    # group by target, nearest first: a stable sort by target after a sort by distance
    by_distance = torch.argsort(distance)
    order = by_distance[torch.argsort(target[by_distance], stable=True)]
    counts = torch.bincount(target)
    starts = torch.cumsum(counts, 0) - counts
    kth = torch.full(counts.shape, math.inf, dtype=distance.dtype, device=distance.device)
    full = counts >= max_neighbors  # targets with fewer edges keep them all
    kth[full] = distance[order][starts[full] + max_neighbors - 1]
    return distance <= kth[target] + tolerance


def edge_vectors(
    frac: torch.Tensor, lattice: torch.Tensor, batch: torch.Tensor, edge_index: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """Edge vectors ``[E, 3]`` (A), ``(frac[j] + offsets - frac[i]) @ lattice[batch[i]]``.

    Differentiable with respect to ``frac [N, 3]`` and ``lattice [B, 3, 3]``.
    """
    src, dst = edge_index
    dfrac = frac[src] + offsets - frac[dst]
    return torch.einsum("ek,ekl->el", dfrac, lattice[batch[dst]])
