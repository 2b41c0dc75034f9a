"""AdamW with weight decay on weight matrices only.

Norm scales, biases and embedding tables are left undecayed: decaying them pulls layer-norm
gains and per-element embeddings toward zero without regularising anything useful.
"""

import torch
from torch import nn


def _is_norm(module: nn.Module) -> bool:
    # Covers torch's norms and the backbone's own (EquivariantLayerNorm, RMSNorm, ...).
    return (
        isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm))
        or "Norm" in type(module).__name__
    )


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed (weights, ndim >= 2) and undecayed (biases, norms, embeddings).

    A parameter goes to the undecayed group when it is 0-/1-dimensional, belongs to a norm
    module, belongs to an nn.Embedding, or its name contains "embed".
    """
    no_decay = set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if p.ndim < 2 or _is_norm(module) or isinstance(module, nn.Embedding) or "embed" in full.lower():
                no_decay.add(full)
    decay_params, no_decay_params = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay_params if name in no_decay else decay_params).append(p)
    return [
        {"params": decay_params, "weight_decay": weight_decay},
        {"params": no_decay_params, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
    """torch AdamW over `param_groups(model, weight_decay)`; lr is overwritten every step by the schedule."""
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused)
