import pytest
import torch

from sfm.pipeline.ema import EMA


def test_update_follows_definition_with_warmup():
    p = [torch.zeros(3)]
    ema = EMA(p, decay=0.9)
    for n, value in enumerate([1.0, 2.0, 3.0], start=1):
        expected = ema.shadow[0].clone()
        p[0].fill_(value)
        ema.update(p)
        d = min(0.9, (1 + n) / (10 + n))
        torch.testing.assert_close(ema.shadow[0], d * expected + (1 - d) * value)


def test_swapped_in_restores_and_state_roundtrip():
    p = [torch.arange(4.0), torch.ones(2, 2)]
    ema = EMA(p, decay=0.5)
    p[0].add_(10)
    ema.update(p)
    live = [t.clone() for t in p]
    with ema.swapped_in(p):
        torch.testing.assert_close(p[0], ema.shadow[0])
    for a, b in zip(p, live):
        assert torch.equal(a, b)
    other = EMA([torch.zeros(4), torch.zeros(2, 2)], decay=0.1)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5 and other.num_updates == 1 and torch.equal(other.shadow[0], ema.shadow[0])


def test_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        EMA([torch.zeros(1)], decay=1.0)
