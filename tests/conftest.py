"""Shared fixtures: small random OC20-like structures (no files needed), the test device, and a
tiny demo world with its dense split (built once per session)."""

import os

import numpy as np
import pytest
import torch
from torch_geometric.data import Data


def oc20_like(seed: int, natoms: int = 12, s2ef: bool = False) -> Data:
    """A random OC20-style IS2RE (or S2EF) entry: oblique a, b ~ 8-12 A, tilted c ~ 30-40 A.

    ``atomic_numbers`` is float, as in the published OC20 files.
    """
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(8, 12, 2)
    gamma = rng.uniform(np.radians(60), np.radians(120))
    cell = np.array(
        [
            [a, 0, 0],
            [b * np.cos(gamma), b * np.sin(gamma), 0],
            [rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(30, 40)],
        ]
    )
    frac = rng.uniform(0, 1, (natoms, 3)) * [1, 1, 0.4]
    pos = torch.tensor(frac @ cell, dtype=torch.float32)
    tags = torch.tensor(rng.integers(0, 3, natoms))
    fields = dict(
        pos=pos,
        cell=torch.tensor(cell, dtype=torch.float32).unsqueeze(0),
        atomic_numbers=torch.tensor(rng.choice([1, 6, 7, 8, 29, 78], natoms), dtype=torch.float32),
        natoms=natoms,
        tags=tags,
        sid=int(seed),
    )
    if s2ef:
        fields.update(y=float(rng.normal()), force=torch.randn(natoms, 3), fixed=(tags == 0).float())
    else:
        fields.update(y_init=float(rng.normal()), y_relaxed=float(rng.normal()), pos_relaxed=pos + 0.1)
    return Data(**fields)


@pytest.fixture
def make_structure():
    """Factory ``make_structure(seed, natoms=12, s2ef=False) -> Data`` (see :func:`oc20_like`)."""
    return oc20_like


@pytest.fixture
def lmdb_file(tmp_path):
    """Path to an IS2RE-style LMDB file with 5 structures of 8..12 atoms (sid = index)."""
    from sfm.data import write_lmdb

    path = tmp_path / "data.lmdb"
    write_lmdb(path, (oc20_like(i, natoms=8 + i) for i in range(5)))
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", "device: runs on SFM_TEST_DEVICE (scripts/gpu_check.sh selects these)")


def pytest_collection_modifyitems(items):
    for item in items:  # a test that takes the `device` fixture is a device test
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker("device")


@pytest.fixture
def device():
    """``torch.device`` of ``SFM_TEST_DEVICE`` (default cpu): ``SFM_TEST_DEVICE=cuda pytest -m device``
    runs the device tests on a GPU (``scripts/gpu_check.sh`` does)."""
    device = torch.device(os.environ.get("SFM_TEST_DEVICE", "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"SFM_TEST_DEVICE={device} but torch sees no CUDA device")
    return device


@pytest.fixture(scope="session")
def dense_world(tmp_path_factory):
    """A 4-train-system demo world (2 systems in each other split) with ``is2re_dense`` built by
    ``python -m sfm.data.demo --dense``: test_id (2 systems), 1 val_id and 1 train system, at most
    2 heuristic and 2 random placements each. Returns the world folder."""
    from sfm.data import demo

    out = tmp_path_factory.mktemp("dense") / "world"
    demo.main(
        [
            "--out",
            str(out),
            "--num_systems",
            "4",
            "--workers",
            "2",
            "--dense",
            "--dense_val",
            "1",
            "--dense_train",
            "1",
            "--dense_sites",
            "2",
            "--dense_random",
            "2",
        ]
    )
    return out
