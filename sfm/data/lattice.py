"""Structure math on periodic cells: fractional <-> Cartesian, wrapping, minimum image.

Convention (held everywhere in sfm): a lattice ``L`` is a ``[3, 3]`` matrix (or a batch
``[..., 3, 3]``) whose ROWS are the lattice vectors a, b, c, in Angstrom (ASE and
pymatgen convention). A point with fractional coordinates ``f`` (a row ``[3]``) sits at

    cart = f @ L            frac = solve(L^T, cart^T)^T

Never ``cart @ inv(L).T``: that is right only for symmetric cells. The reciprocal
vectors (without 2 pi) are the columns of ``inv(L)``; the spacing between the lattice
planes normal to reciprocal vector k is ``1 / |inv(L)[:, k]|``.

Per-atom batched use: with ``batch`` ``[N]`` the graph index of each atom and
``lattice`` ``[B, 3, 3]``, pass ``lattice[batch]`` (``[N, 3, 3]``).
"""

from __future__ import annotations

import itertools

import torch

_IMAGES_27 = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)))  # [27, 3]


def frac_to_cart(frac: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
    """Cartesian positions ``[..., 3]`` (A) of fractional ``frac [..., 3]``.

    ``lattice`` is ``[3, 3]`` (shared) or ``[..., 3, 3]`` matching ``frac``'s leading dims.
    """
    return (frac.unsqueeze(-2) @ lattice).squeeze(-2)


def cart_to_frac(cart: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
    """Fractional coordinates ``[..., 3]`` of Cartesian ``cart [..., 3]`` (A), not wrapped.

    Solves ``f @ L = cart`` (i.e. ``L^T f^T = cart^T``); shapes as in :func:`frac_to_cart`.
    """
    lat_t = lattice.transpose(-1, -2).expand(*cart.shape[:-1], 3, 3)
    return torch.linalg.solve(lat_t, cart.unsqueeze(-1)).squeeze(-1)


def wrap_frac(frac: torch.Tensor) -> torch.Tensor:
    """``frac % 1`` in ``[0, 1)``, exactly: tiny negatives that round to 1.0 become 0.0, no -0.0."""
    wrapped = torch.remainder(frac, 1.0)
    return torch.where(wrapped >= 1.0, torch.zeros_like(wrapped), wrapped) + 0.0


def as_cells(cell: torch.Tensor) -> torch.Tensor:
    """``[B, 3, 3]`` view of stored cells (OC20 keeps ``[1, 3, 3]`` per entry; ``[3, 3]``,
    ``[9]`` or ``[B, 9]`` read the same, row-major). ValueError if the entries are not 9 per cell."""
    if cell.numel() == 0 or cell.numel() % 9:
        raise ValueError(f"cell must hold 3x3 entries per structure, got shape {list(cell.shape)}")
    return cell.reshape(-1, 3, 3)


def as_cell(cell: torch.Tensor) -> torch.Tensor:
    """``[3, 3]`` lattice of one structure from its stored cell (``[1, 3, 3]``, ``[3, 3]`` or ``[9]``)."""
    if cell.numel() != 9:
        raise ValueError(f"cell of one structure must hold 3x3 entries, got shape {list(cell.shape)}")
    return cell.reshape(3, 3)


def volume(lattice: torch.Tensor) -> torch.Tensor:
    """Signed cell volume ``det(L)`` in A^3, ``[...]``; positive for right-handed cells."""
    return torch.linalg.det(lattice)


def check_lattice(lattice: torch.Tensor, name: str = "lattice") -> None:
    """Raise ``ValueError`` naming the problem if any cell in ``[3,3]`` / ``[B,3,3]`` is unusable.

    Rejects non-finite entries, singular cells (volume below 1e-6 of the product of the
    vector lengths, i.e. vectors nearly coplanar) and left-handed cells (``det(L) < 0``).
    """
    lat = as_cells(lattice.detach()).double()
    where = (lambda b: f"{name}[{b}]") if lattice.dim() == 3 else (lambda b: name)
    for b in range(lat.shape[0]):
        cell = lat[b]
        if not torch.isfinite(cell).all():
            raise ValueError(f"{where(b)} has non-finite entries: {cell.tolist()}")
        det = torch.linalg.det(cell).item()
        scale = cell.norm(dim=-1).prod().item()
        if abs(det) <= 1e-6 * scale:
            raise ValueError(f"{where(b)} is singular (det={det:.3g} A^3): {cell.tolist()}")
        if det < 0:
            raise ValueError(
                f"{where(b)} is left-handed (det={det:.3g} A^3 < 0); rows must be a right-handed "
                f"a, b, c: {cell.tolist()}"
            )


def minimum_image(dfrac: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
    """Cartesian displacement ``[..., 3]`` (A) of the shortest periodic image of ``dfrac``.

    ``dfrac [..., 3]`` is a fractional displacement (any value, not necessarily wrapped);
    ``lattice`` is ``[3, 3]`` or ``[..., 3, 3]``. Exact for any cell, however skewed:
    round to ``[-0.5, 0.5]``, take the best of the 27 neighbouring images (distance
    ``d``), then, since any shorter image ``f + n`` has ``|f_k + n_k| <= d / h_k``
    (``h_k`` the plane spacing), search the wider box that bound allows if it exceeds
    +-1 on some axis (only for strongly skewed cells). Ties pick the first image found.
    """
    lattice = lattice.to(dfrac.dtype)
    frac0 = dfrac - torch.round(dfrac)
    best = _best_image(frac0, lattice, _IMAGES_27.to(dfrac))
    dist = best.norm(dim=-1, keepdim=True)  # [..., 1]
    recip_norm = torch.linalg.inv(lattice).norm(dim=-2).expand_as(frac0)  # |inv(L)[:, k]| = 1/h_k
    reach = (frac0.abs() + dist * recip_norm).detach().reshape(-1, 3)
    max_shift = torch.floor(reach.max(dim=0).values + 1e-6).long().tolist() if reach.numel() else [0, 0, 0]
    if max(max_shift) <= 1:
        return best
    images = torch.tensor(list(itertools.product(*(range(-k, k + 1) for k in max_shift)))).to(dfrac)
    return _best_image(frac0, lattice, images)


def _best_image(frac: torch.Tensor, lattice: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Shortest of ``(frac + images[m]) @ L`` over images ``[M, 3]``; returns ``[..., 3]``."""
    cand = frac.unsqueeze(-2) + images  # [..., M, 3]
    vec = cand @ lattice  # [..., M, 3]
    idx = vec.detach().pow(2).sum(-1).argmin(dim=-1)  # [...]
    return torch.gather(vec, -2, idx[..., None, None].expand(*idx.shape, 1, 3)).squeeze(-2)
