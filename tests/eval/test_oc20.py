"""OC20 metrics against hand-computed cases and ASE's minimum-image distances."""

import numpy as np
import pytest
import torch
from ase.geometry import get_distances
from hypothesis import given, settings
from hypothesis import strategies as st

from sfm.eval.oc20 import (
    adwt,
    efwt,
    energy_mae,
    ewt,
    force_cos,
    force_mae,
    is2re_metrics,
    mean_distance,
    s2ef_metrics,
    success_at_k,
)


def test_energy_metrics_by_hand():
    pred, target = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.01, 2.5, 2.97, 4.0])
    assert energy_mae(pred, target) == pytest.approx((0.01 + 0.5 + 0.03 + 0.0) / 4)
    assert ewt(pred, target) == pytest.approx(0.5)  # 0.01 and 0.0 are below 0.02
    assert is2re_metrics(pred, target) == {"energy_mae": energy_mae(pred, target), "ewt": 0.5}


def test_force_metrics_by_hand():
    target = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0], [9.0, 9, 9]])
    pred = torch.tensor([[1.0, 0, 0], [0, 0, 2.0], [0, 0, -3.0], [0.0, 0, 0]])
    free = torch.tensor([True, True, True, False])  # the fixed atom's huge error is ignored
    assert force_mae(pred, target, free) == pytest.approx((0 + 4 + 6) / 9)
    assert force_cos(pred, target, free) == pytest.approx((1 + 0 - 1) / 3)
    assert force_mae(pred, target) == pytest.approx((10 + 27) / 12)


def test_efwt_by_hand():
    batch = torch.tensor([0, 0, 1, 1, 2])
    free = torch.tensor([True, False, True, True, True])
    target_f = torch.zeros(5, 3)
    pred_f = torch.tensor(
        [
            [0.02, 0, 0],
            [5.0, 0, 0],  # structure 0: fixed atom off, free ok
            [0.01, 0, 0],
            [0, 0.04, 0],  # structure 1: one component 0.04 > 0.03
            [0.0, 0, 0],
        ]
    )  # structure 2: forces fine, energy off
    pred_e, target_e = torch.tensor([0.0, 0.0, 0.03]), torch.zeros(3)
    assert efwt(pred_e, target_e, pred_f, target_f, batch, free) == pytest.approx(1 / 3)
    m = s2ef_metrics(pred_e, target_e, pred_f, target_f, batch, free)
    assert set(m) == {"energy_mae", "force_mae", "force_cos", "efwt"}


def test_adwt_by_hand():
    # thresholds 0.010, 0.011, ..., 0.499 (490): 0.005 is below all, 0.1005 below the 399
    # from 0.101 on, 0.6 below none; a nan (missing) structure is never within.
    assert adwt(torch.tensor([0.005, 0.1005, 0.6])) == pytest.approx((490 + 399 + 0) / (3 * 490))
    assert adwt(np.array([0.005, np.nan])) == pytest.approx(0.5)


cells = st.tuples(*[st.floats(-0.45, 0.45)] * 3)


@settings(max_examples=25, deadline=None)
@given(skew=cells, seed=st.integers(0, 10_000))
def test_mean_distance_is_ase_minimum_image(skew, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(3.0, 9.0, size=3)
    cell = np.diag(lengths) + np.array([[0, 0, 0], [skew[0], 0, 0], [skew[1], skew[2], 0]]) * lengths[:, None]
    n = [3, 5]
    ref = rng.uniform(-1, 2, size=(sum(n), 3)) @ cell
    pos = ref + rng.normal(scale=2.0, size=ref.shape)  # large moves: many cross a boundary
    batch = torch.tensor([0] * n[0] + [1] * n[1])
    mask = torch.tensor([True, False, True, True, True, False, True, True])
    got = mean_distance(torch.tensor(pos), torch.tensor(ref), torch.tensor(np.stack([cell, cell])), batch, mask)
    for b in range(2):
        sel = (batch == b).numpy() & mask.numpy()
        _, d = get_distances(pos[sel], ref[sel], cell=cell, pbc=True)
        np.testing.assert_allclose(got[b].item(), np.diagonal(d).mean(), rtol=1e-9)


def test_mean_distance_all_masked_is_nan():
    cell = torch.eye(3).expand(1, 3, 3) * 5
    pos = torch.zeros(2, 3)
    d = mean_distance(pos, pos, cell, torch.zeros(2, dtype=torch.long), torch.tensor([False, False]))
    assert torch.isnan(d).all() and adwt(d) == 0.0


def test_success_at_k_by_hand():
    energies = np.array(
        [
            [0.35, 0.05, 0.2],  # best of 1: 0.35 (0.25 above), of 2: 0.05
            [np.nan, -0.3, 0.0],  # anomalous first sample; below the reference
            [0.5, 0.6, 0.7],
        ]
    )  # never within 0.1 eV
    ref = np.array([0.1, 0.0, 0.0])
    assert success_at_k(energies, ref, 1) == pytest.approx(0.0)
    assert success_at_k(energies, ref, 2) == pytest.approx(2 / 3)
    assert success_at_k(energies, ref, 3, threshold=0.55) == pytest.approx(1.0)


def test_within_system_metrics_by_hand():
    from sfm.eval.oc20 import within_system_metrics

    target = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0])
    system = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    pred = torch.tensor([0.1, 0.9, 2.2, 2.8, 5.0, 4.0, 3.0])  # system 0 in order, system 1 reversed
    m = within_system_metrics(pred, target, system)
    assert m["spearman_median"] == pytest.approx(0.0) and m["spearman_mean"] == pytest.approx(0.0)  # (1 + -1) / 2
    centred0 = (pred[:4] - pred[:4].mean()) - (target[:4] - target[:4].mean())
    centred1 = (pred[4:] - pred[4:].mean()) - (target[4:] - target[4:].mean())
    assert m["centred_energy_mae"] == pytest.approx(float(torch.cat([centred0, centred1]).abs().mean()))
    # a constant prediction (a per-element fit) has no ranking at all
    flat = within_system_metrics(torch.zeros(7), target, system)
    assert np.isnan(flat["spearman_median"]) and flat["centred_energy_mae"] == pytest.approx(
        (1.5 + 0.5 + 0.5 + 1.5 + 1 + 0 + 1) / 7
    )
