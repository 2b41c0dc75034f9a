"""Each rank's batches of one epoch, in a reproducible order that can start mid-epoch.

The order is torch's DistributedSampler (shuffled with seed + epoch, padded so that every rank
gets the same number of samples, hence the same number of batches and optimizer steps), cut
into batches of `batch_size`. Starting at batch k of epoch e gives exactly the batches an
uninterrupted run would have seen from there: that is the data position a checkpoint stores.
The loader has its own random generator, so creating one does not move the global RNG.
"""

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from sfm.pipeline.distributed import Dist


class ShardedBatches:
    """Batches of this rank: `len()` per epoch, `epoch(e, start)` iterates them from batch `start`."""

    def __init__(
        self, dataset, batch_size: int, collate_fn, dist: Dist, seed: int, shuffle: bool, num_workers: int = 0
    ):
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.seed = seed
        self.num_workers = num_workers
        self.sampler = DistributedSampler(
            dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=shuffle, seed=seed, drop_last=False
        )

    def __len__(self) -> int:
        return math.ceil(self.sampler.num_samples / self.batch_size)

    def batch_len(self, k: int) -> int:
        """Structures in this rank's batch ``k`` of an epoch (the last one may be short)."""
        return min(self.batch_size, self.sampler.num_samples - k * self.batch_size)

    def epoch(self, epoch: int, start: int = 0):
        self.sampler.set_epoch(epoch)
        indices = list(self.sampler)[start * self.batch_size :]
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=indices,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed + epoch),
        )


def random_subset(dataset, n: int, seed: int):
    """Items of a seeded random subset of n structures (all of them, in order, if n == 0 or n >= len):
    what normalisers are fitted on."""
    if n == 0 or n >= len(dataset):
        indices = range(len(dataset))
    else:
        indices = np.sort(np.random.default_rng(seed).choice(len(dataset), n, replace=False))
    return (dataset[int(i)] for i in indices)
