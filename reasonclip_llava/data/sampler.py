"""A distributed sampler that resumes at the exact sample position.

Each epoch has one global order (a permutation seeded by (seed, epoch), or 0..n-1 without shuffle).
Rank r reads positions r, r + W, r + 2W, ... of that order (W = world size), like torch's
DistributedSampler; without drop_last the order is padded by wrapping around so every rank gets the
same count. The state is (epoch, global position consumed). The trainer reports progress after each
batch with ``sampler.advance(batch["num_drawn"])`` (the per-rank number of sampler positions the batch
used, skipped images included); the sampler cannot count this itself because DataLoader workers
prefetch ahead of the training loop::

    sampler = ResumableDistributedSampler(len(dataset), rank=rank, world_size=world_size, seed=seed)
    sampler.load_state_dict(checkpoint["sampler"])           # optional, on resume
    for epoch in range(sampler.epoch, num_epochs):
        sampler.set_epoch(epoch); dataset.set_epoch(epoch)  # same epoch keeps the position
        for batch in DataLoader(dataset, batch_size=b, sampler=sampler, collate_fn=collator):
            ...
            sampler.advance(batch["num_drawn"])
            checkpoint["sampler"] = sampler.state_dict()

The position is stored globally (local count x world size), so a run may resume with the same world
size exactly; with another world size it continues with the same remaining global order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def dist_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): given values, else torch.distributed's when initialised, else (0, 1)."""
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in range for world_size {world_size}")
    return rank, world_size


class ResumableDistributedSampler(Sampler[int]):
    def __init__(
        self,
        num_samples: int,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if hasattr(num_samples, "__len__"):  # a dataset was passed
            num_samples = len(num_samples)  # type: ignore[arg-type]
        if num_samples < 1:
            raise ValueError(f"sampler needs at least one sample, got {num_samples}")
        self.num_samples = int(num_samples)
        self.rank, self.world_size = dist_rank_world(rank, world_size)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.consumed = 0  # global positions of this epoch already used (all ranks together)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning, or keep the position when it is the current epoch (resume)."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.consumed = 0

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The global index order of an epoch (before padding / splitting across ranks)."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def _local_indices(self) -> np.ndarray:
        order = self.order()
        rest = order[min(self.consumed, len(order)) :]
        if self.drop_last:
            rest = rest[: len(rest) // self.world_size * self.world_size]
        else:
            pad = -len(rest) % self.world_size
            rest = np.concatenate([rest, np.resize(order, pad)]) if pad else rest
        return rest[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._local_indices().tolist())

    def __len__(self) -> int:
        """Indices this rank still has to read in the current epoch."""
        return len(self._local_indices())

    def advance(self, num_local: int) -> None:
        """Record that this rank used `num_local` more positions (every rank advances in step)."""
        if num_local < 0:
            raise ValueError(f"cannot advance by {num_local}")
        self.consumed += int(num_local) * self.world_size

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("num_samples", "seed", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]!r}, this sampler has {getattr(self, key)!r}")
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
