"""Anchor displacements: brute force, slab geometry, symmetries."""

import torch

from sfm.models.diffusion.anchors import anchor_displacements


def brute(frac, batch, groups):
    out = torch.zeros(len(frac), groups.shape[1], 3, dtype=frac.dtype)
    cnt = torch.zeros(len(frac), groups.shape[1])
    for i in range(len(frac)):
        for g in range(groups.shape[1]):
            js = [j for j in range(len(frac)) if j != i and batch[j] == batch[i] and groups[j, g]]
            if js:
                d = frac[js] - frac[i]
                out[i, g] = (d - torch.round(d)).mean(0)
                cnt[i, g] = len(js)
    return out, cnt


def test_matches_brute_force_and_permutes():
    g = torch.Generator().manual_seed(0)
    frac = torch.rand(11, 3, generator=g, dtype=torch.float64) * 0.98 + 0.01
    batch = torch.tensor([0] * 5 + [1] * 6)
    groups = torch.rand(11, 2, generator=g) < 0.5
    dfrac, count = anchor_displacements(frac, batch, groups)
    ref, ref_count = brute(frac, batch, groups)
    assert torch.allclose(dfrac, ref) and torch.equal(count, ref_count.to(count.dtype))
    perm = torch.cat([torch.randperm(5, generator=g), 5 + torch.randperm(6, generator=g)])
    dp, cp = anchor_displacements(frac[perm], batch, groups[perm])
    assert torch.allclose(dp, dfrac[perm]) and torch.equal(cp, count[perm])
    shifted, _ = anchor_displacements(torch.remainder(frac + 0.37, 1.0), batch, groups)
    assert torch.allclose(shifted, dfrac, atol=1e-12)


def test_points_from_vacuum_to_the_slab_mid_plane():
    # a 4 x 4 x 2 slab at heights 0.20 / 0.25, one atom in the vacuum at height 0.68
    ij = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij"), -1).reshape(-1, 2) / 4
    slab = torch.cat([torch.cat([ij, torch.full((16, 1), z)], 1) for z in (0.20, 0.25)]).double()
    frac = torch.cat([slab, torch.tensor([[0.1, 0.3, 0.68]], dtype=torch.float64)])
    given = torch.zeros(len(frac), dtype=torch.bool)
    given[:32] = True
    dfrac, count = anchor_displacements(
        frac, torch.zeros(len(frac), dtype=torch.long), torch.stack([given, ~given], -1)
    )
    assert count[-1].tolist() == [32, 0]
    assert abs(dfrac[-1, 0, 2].item() - (0.225 - 0.68)) < 1e-7
    assert dfrac[-1, 0, :2].abs().max() < 0.1  # in-plane parts average out, up to the wrap boundary (< 1/2 spacing)
    assert dfrac[-1, 1].abs().max() == 0


def test_half_cell_ties_count_as_zero_whatever_the_round_off():
    # atoms at 0 and 1/2: rounding would pick +1/2 or -1/2 by the last bit of frac
    frac = torch.tensor([[0.0, 0.0, 0.1], [0.5, 0.0, 0.1]], dtype=torch.float64)
    batch, groups = torch.zeros(2, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool)
    for nudge in (0.0, 1e-9, -1e-9):
        dfrac, _ = anchor_displacements(frac + torch.tensor([[0.0, 0.0, 0.0], [nudge, 0.0, 0.0]]), batch, groups)
        assert dfrac[:, 0, 0].abs().max() < 1e-8
    far, _ = anchor_displacements(torch.tensor([[0.0, 0.0, 0.1], [0.49, 0.0, 0.1]], dtype=torch.float64), batch, groups)
    assert torch.allclose(far[:, 0, 0], torch.tensor([0.49, -0.49], dtype=torch.float64))  # not a tie: kept
