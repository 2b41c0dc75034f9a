"""Helpers for the backbone / S2EF tests: random periodic structures and small models."""

import contextlib

import pytest
import torch

from sfm.models import EquiformerV2, make_backbone_config


def random_cell(seed: int, n: int = 6, size: float = 4.5):
    """``(Z [n], frac [n, 3] wrapped, lattice [1, 3, 3])``: an oblique cell, random atoms.

    Random positions: no two neighbour distances tie, so ``max_neighbors`` is unambiguous.
    """
    g = torch.Generator().manual_seed(seed)
    lattice = size * torch.eye(3) + 0.6 * torch.rand(3, 3, generator=g) - 0.3
    z = torch.tensor([1, 6, 8, 29, 78, 13, 46, 7])[torch.randint(0, 8, (n,), generator=g)]
    frac = torch.rand(n, 3, generator=g)
    return z, frac, lattice[None]


@contextlib.contextmanager
def default_dtype(dtype):
    """Build modules in ``dtype`` (their constant buffers too)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def backbone(dtype=torch.float32, seed=0, **overrides):
    """The tiny backbone (eval mode) in ``dtype``; ``overrides`` as BackboneConfig fields."""
    torch.manual_seed(seed)
    with default_dtype(dtype):
        return EquiformerV2(make_backbone_config("tiny", **overrides)).eval()


@pytest.fixture
def eqv2_cell():
    return random_cell


@pytest.fixture
def eqv2_backbone():
    return backbone
