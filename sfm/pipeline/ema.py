"""Exponential moving average of the model weights.

The EMA works on "local" parameter tensors: the full parameters for Single / DDP / ZeRO-1/2,
and each rank's own partition (`param.ds_tensor`) under ZeRO-3, so it is sharded exactly
like the model and costs 1/world_size of the weights per rank there. It is kept in fp32.
Validation and the consolidated checkpoint use the EMA weights by swapping them in.
"""

from contextlib import contextmanager

import torch


class EMA:
    """shadow = decay * shadow + (1 - decay) * param, with decay warmed up as min(decay, (1+n)/(10+n)).

    The warmup keeps the first steps from being dominated by the random initialisation.
    """

    def __init__(self, params: list[torch.Tensor], decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self, params: list[torch.Tensor]) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        # one fused kernel per tensor list (as timm's ModelEmaV3), not one per parameter
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in params], 1.0 - d)

    @contextmanager
    def swapped_in(self, params: list[torch.Tensor]):
        """Within the block, `params` hold the EMA weights; their own values come back after."""
        with torch.no_grad():
            backup = [p.detach().clone() for p in params]
            for p, s in zip(params, self.shadow, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup, strict=True):
                    p.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors, the model {len(self.shadow)}")
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        for s, t in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(t)
