"""A small real model and data set for testing the trainer without the backbone.

ToyEnergy satisfies the model contract (loss(batch) -> (loss, parts), build_kwargs,
normaliser in buffers): per-atom MLP on the element embedding and periodic features of the
fractional coordinates, summed per structure, regressed on y (MSE of normalised energies).
The data is a learnable world: y = sum over atoms of a per-element energy + 0.5 cos(2 pi fx).

Run as a script (python or torchrun) to train it with the pipeline:
    torchrun --nproc_per_node 2 tests/pipeline/trainer_toy.py --strategy Zero1 --save_dir D [TrainConfig flags]
"""

import argparse
import json
import math
import os
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch_geometric.data import Data

ELEMENT_ENERGY = {1: -1.0, 8: -2.0, 29: -3.5, 78: -5.0}


class ToyEnergy(nn.Module):
    def __init__(self, hidden: int = 32, noise: float = 0.0, energy_mean: float = 0.0, energy_std: float = 1.0):
        super().__init__()
        self.noise = noise  # std of a random jitter of frac in training: draws from the global RNG
        self.embed = nn.Embedding(100, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden + 6, hidden), nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.register_buffer("energy_mean", torch.tensor(float(energy_mean)))
        self.register_buffer("energy_std", torch.tensor(float(energy_std)))
        self.build_kwargs = {"hidden": hidden, "noise": noise}

    def normalised_energy(self, batch) -> torch.Tensor:
        """[B] predicted (y - mean) / std."""
        frac = batch.frac  # from sfm.data.collate
        if self.training and self.noise:
            frac = frac + self.noise * torch.randn_like(frac)
        angle = 2 * math.pi * frac
        feats = torch.cat([self.embed(batch.atomic_numbers.long()), angle.sin(), angle.cos()], dim=-1)
        per_atom = self.mlp(feats).squeeze(-1)
        return torch.zeros(batch.num_graphs, device=per_atom.device, dtype=per_atom.dtype).index_add(
            0, batch.batch, per_atom
        )

    def loss(self, batch):
        pred = self.normalised_energy(batch).float()
        target = (batch.y.float() - self.energy_mean) / self.energy_std
        loss = (pred - target).pow(2).mean()
        mae = ((pred - target).abs() * self.energy_std).mean()
        return loss, {"energy_mse": loss.detach(), "energy_mae": mae.detach()}


def build_toy(**kwargs) -> ToyEnergy:
    return ToyEnergy(**kwargs)


def toy_structures(n: int, seed: int = 0, natoms=(3, 8), nan_at=()) -> list[Data]:
    """n structures in cubic-ish cells of 4-6 A with y from ELEMENT_ENERGY; y = NaN at `nan_at`."""
    rng = np.random.default_rng(seed)
    out = []
    elements = np.array(list(ELEMENT_ENERGY))
    for i in range(n):
        k = int(rng.integers(natoms[0], natoms[1] + 1))
        cell = np.diag(rng.uniform(4, 6, 3)) + rng.uniform(-0.3, 0.3, (3, 3))
        frac = rng.uniform(0, 1, (k, 3))
        z = rng.choice(elements, k)
        y = sum(ELEMENT_ENERGY[int(e)] for e in z) + 0.5 * np.cos(2 * np.pi * frac[:, 0]).sum()
        out.append(
            Data(
                pos=torch.tensor(frac @ cell, dtype=torch.float32),
                cell=torch.tensor(cell, dtype=torch.float32).unsqueeze(0),
                atomic_numbers=torch.tensor(z),
                natoms=k,
                tags=torch.ones(k, dtype=torch.long),
                sid=i,
                y=float("nan") if i in nan_at else float(y),
            )
        )
    return out


def main(argv=None) -> None:
    """Train ToyEnergy with any TrainConfig flag (--name value); writes save_dir/summary.json on rank 0."""
    from sfm.pipeline.trainer import TrainConfig, seed_everything, train

    p = argparse.ArgumentParser()
    for f in fields(TrainConfig):
        kind = {int: int, float: float, bool: lambda s: s.lower() in ("1", "true")}.get(f.type, str)
        p.add_argument(f"--{f.name}", type=kind, default=f.default)
    p.add_argument("--n_train", type=int, default=16)
    p.add_argument("--n_valid", type=int, default=4)
    p.add_argument("--noise", type=float, default=0.0)
    args = p.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    seed_everything(0)
    model = ToyEnergy(noise=args.noise)
    summary = train(
        model, toy_structures(args.n_train), toy_structures(args.n_valid, seed=1), cfg, meta={"task": "toy"}
    )
    if int(os.environ.get("RANK", "0")) == 0:
        Path(cfg.save_dir, "summary.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
