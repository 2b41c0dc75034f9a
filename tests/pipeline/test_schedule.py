import math

import pytest

from sfm.pipeline.schedule import cosine_lr


def test_warmup_is_linear_and_reaches_max():
    lrs = [cosine_lr(s, 1.0, warmup_steps=4, total_steps=20) for s in range(5)]
    assert lrs == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_cosine_decays_to_floor_and_stays():
    lrs = [cosine_lr(s, 2.0, warmup_steps=2, total_steps=12, min_lr_ratio=0.1) for s in range(2, 16)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[0] == pytest.approx(2.0)
    assert cosine_lr(7, 2.0, 2, 12, 0.1) == pytest.approx(0.2 + 0.9 * (1 + math.cos(math.pi * 0.5)))  # halfway
    assert lrs[-1] == pytest.approx(0.2) and cosine_lr(12, 2.0, 2, 12, 0.1) == pytest.approx(0.2)


def test_no_warmup():
    assert cosine_lr(0, 1.0, warmup_steps=0, total_steps=10) == pytest.approx(1.0)
