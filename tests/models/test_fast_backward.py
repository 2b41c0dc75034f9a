"""The layers rewritten for a fast backward pass equal their reference formulations.

Each reference below is the layer as first written (slices, selects and advanced indexing,
whose backward fills zero tensors as large as the edge features); the rewrites (split /
cat, the +-m block GEMM, index_select with an index_add backward, the fused SiLU
derivative) must give the same values and gradients to float32 round-off, so training is
unchanged. The whole S2EF model is checked too: loss and every parameter's gradient.
"""

import pytest
import torch
from torch import nn

from sfm.models import build_model
from sfm.models.feed_forward import FeedForward
from sfm.models.graph import EdgeGraph
from sfm.models.layer_norm import EquivariantLayerNormSH
from sfm.models.s2_activation import S2Grid, SeparableS2Activation
from sfm.models.so2_conv import SO2Convolution
from sfm.models.so3 import sh_layout
from sfm.models.so3_linear import SO3Linear


def so2_conv_reference(conv: SO2Convolution, x, radial):
    """Per order: slices of x, one GEMM on (+m, -m) rows, the complex combination by selects."""
    num_edges, n0 = x.shape[0], conv.layout.lmax + 1
    x0 = x[:, :n0].reshape(num_edges, n0 * conv.cin) * radial[:, : n0 * conv.cin]
    out0 = conv.fc_m0(x0)
    pieces, offset = (
        [out0[:, : n0 * conv.cout].reshape(num_edges, n0, conv.cout)],
        n0 * conv.cin,
    )
    for (m, start, n), fc in zip(conv.layout.m_slices[1:], conv.fc_m):
        pair = x[:, start : start + 2 * n].reshape(num_edges, 2, n * conv.cin)
        pair = pair * radial[:, None, offset : offset + n * conv.cin]
        offset += n * conv.cin
        y = fc(pair).view(num_edges, 2, 2, n, conv.cout)
        pieces += [y[:, 0, 0] - y[:, 1, 1], y[:, 1, 0] + y[:, 0, 1]]
    return torch.cat(pieces, dim=1), out0[:, n0 * conv.cout :]


def layer_norm_reference(norm: EquivariantLayerNormSH, x):
    scalars = nn.functional.layer_norm(x[:, 0], x.shape[-1:], norm.weight[0], norm.bias, norm.eps)
    rest = x[:, 1:]
    ms = torch.einsum("nic,i->n", rest.pow(2), norm.balance) / rest.shape[-1]
    rest = rest * torch.rsqrt(ms + norm.eps)[:, None, None] * norm.weight[norm.degree[1:]]
    return torch.cat([scalars[:, None], rest], dim=1)


def so3_linear_reference(lin: SO3Linear, x):
    out = torch.einsum("nic,ico->nio", x, lin.weight[lin.degree])
    return torch.cat([out[:, :1] + lin.bias, out[:, 1:]], dim=1)


def silu_on_grid_reference(grid: S2Grid, x):
    """SiLU on the grid in plain autograd ops: values, activation and projection back."""
    return torch.einsum(
        "ng,mgc->mnc",
        grid.from_grid,
        nn.functional.silu(torch.einsum("gn,mnc->mgc", grid.to_grid, x)),
    )


def assert_same(fast, ref, inputs, params, rtol=1e-5):
    """Values and the gradients of a random projection, wrt inputs and parameters, agree."""
    fast = fast if isinstance(fast, tuple) else (fast,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    weights = [torch.randn_like(t) for t in ref]
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())
    wrt = list(inputs) + list(params)
    g_fast = torch.autograd.grad(sum((a * w).sum() for a, w in zip(fast, weights)), wrt)
    g_ref = torch.autograd.grad(sum((b * w).sum() for b, w in zip(ref, weights)), wrt)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


@pytest.mark.parametrize("lmax,mmax", [(2, 1), (4, 2), (3, 3)])
def test_so2_convolution_equals_slice_and_select_reference(lmax, mmax):
    torch.manual_seed(0)
    layout = sh_layout(lmax, mmax)
    conv = SO2Convolution(layout, 6, 5, extra_channels=3)
    x = torch.randn(40, layout.n_reduced, 6, requires_grad=True)
    radial = torch.randn(40, layout.n_half * 6, requires_grad=True)
    assert_same(
        conv(x, radial),
        so2_conv_reference(conv, x, radial),
        [x, radial],
        conv.parameters(),
    )
    y, extra = SO2Convolution(layout, 6, 5)(x)
    assert extra is None and y.shape == (40, layout.n_reduced, 5)


def test_node_layers_equal_slice_references():
    torch.manual_seed(1)
    x = torch.randn(30, 16, 8, requires_grad=True)  # lmax 3
    norm, lin = EquivariantLayerNormSH(3, 8), SO3Linear(8, 6, 3)
    with torch.no_grad():
        norm.weight.normal_(1, 0.3)
        norm.bias.normal_()
        lin.bias.normal_()
    assert_same(norm(x), layer_norm_reference(norm, x), [x], norm.parameters())
    assert_same(lin(x), so3_linear_reference(lin, x), [x], lin.parameters())
    ffn = FeedForward(8, 12, 7, 3, S2Grid(3, 12))

    def ffn_reference(x):
        gates = ffn.scalar_mlp(x[:, 0])
        h = ffn.grid.apply(ffn.grid_mlp, ffn.lin1(x))
        return ffn.lin2(torch.cat([gates[:, None], h[:, 1:]], dim=1))

    assert_same(ffn(x), ffn_reference(x), [x], ffn.parameters())


def test_separable_activation_and_fused_silu_backward_equal_autograd():
    torch.manual_seed(2)
    layout = sh_layout(4, 2)
    grid = S2Grid(4, 18, layout.reduced)
    x = torch.randn(50, layout.n_reduced, 8, requires_grad=True)
    scalars = torch.randn(50, 8, requires_grad=True)
    reference = torch.cat(
        [nn.functional.silu(scalars)[:, None], silu_on_grid_reference(grid, x)[:, 1:]],
        dim=1,
    )
    assert_same(SeparableS2Activation(grid)(scalars, x), reference, [scalars, x], [])


def test_gather_pair_backward_equals_indexing():
    torch.manual_seed(3)
    src, dst = torch.randint(0, 9, (60,)), torch.randint(0, 9, (60,))
    graph = EdgeGraph(
        src,
        dst,
        *[None] * 6,
        tokens=torch.zeros(9, dtype=torch.long),
        batch=None,
        num_graphs=1,
    )
    x = torch.randn(9, 4, 3, dtype=torch.float64, requires_grad=True)
    assert_same(graph.gather_pair(x), torch.cat([x[src], x[dst]], dim=-1), [x], [])
    torch.autograd.gradgradcheck(graph.gather_pair, (x,))  # double backward (conservative-force training)


@pytest.mark.parametrize("forces", ["direct", "conservative"])
def test_s2ef_loss_and_gradients_equal_reference_layers(forces, monkeypatch, eqv2_cell):
    """The whole model, with the reference layers patched in, gives the same loss and gradients."""
    from torch_geometric.data import Batch, Data

    items = []
    for seed, n in ((0, 5), (1, 7)):
        z, frac, lattice = eqv2_cell(seed, n=n)
        g = torch.Generator().manual_seed(seed)
        items.append(
            Data(
                atomic_numbers=z,
                pos=frac @ lattice[0],
                cell=lattice,
                y=torch.tensor([1.0 * n]),
                force=torch.randn(n, 3, generator=g),
                fixed=torch.arange(n) < 2,
            )
        )
    batch = Batch.from_data_list(items)
    torch.manual_seed(4)
    model = build_model("tiny", forces=forces, lmax=3, mmax=2).train()

    def loss_and_grads():
        torch.manual_seed(5)  # same dropout / drop-path draws
        model.zero_grad(set_to_none=True)
        loss, _ = model.loss(batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, grads = loss_and_grads()
    monkeypatch.setattr(
        SO2Convolution,
        "forward",
        lambda self, x, radial=None: so2_conv_reference_any(self, x, radial),
    )
    monkeypatch.setattr(EquivariantLayerNormSH, "forward", layer_norm_reference)
    monkeypatch.setattr(SO3Linear, "forward", so3_linear_reference)
    monkeypatch.setattr(
        EdgeGraph,
        "gather_pair",
        lambda self, x: torch.cat([x[self.src], x[self.dst]], dim=-1),
    )
    ref_loss, ref_grads = loss_and_grads()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    for name, g in grads.items():
        torch.testing.assert_close(
            g,
            ref_grads[name],
            rtol=1e-4,
            atol=1e-5 * ref_grads[name].abs().max().item(),
            msg=name,
        )


def so2_conv_reference_any(conv, x, radial):
    """The reference with or without radial weights and extra outputs (as the model calls it)."""
    if radial is None:
        radial = x.new_ones(x.shape[0], conv.layout.n_half * conv.cin)
    y, extra = so2_conv_reference(conv, x, radial)
    return y, extra if conv.extra else None
