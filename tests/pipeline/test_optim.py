import torch
from torch import nn

from sfm.pipeline.optim import build_optimizer, param_groups


class RMSNormLike(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, n))  # 2-D but a norm: still no decay


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.atom_embedding = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.rms = RMSNormLike(4)
        self.species_embed_table = nn.Parameter(torch.zeros(10, 4))


def test_decay_only_on_weight_matrices():
    net = Net()
    decay, no_decay = param_groups(net, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(decay) == {id(net.lin.weight)}
    assert ids(no_decay) == {
        id(p)
        for p in (
            net.atom_embedding.weight,
            net.lin.bias,
            net.norm.weight,
            net.norm.bias,
            net.rms.scale,
            net.species_embed_table,
        )
    }


def test_optimizer_is_adamw_with_both_groups():
    opt = build_optimizer(Net(), lr=1e-3, weight_decay=0.01)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 2
