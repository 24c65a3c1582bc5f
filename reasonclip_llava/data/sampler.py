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

``DistinctImageSampler`` is the same sampler with another epoch order: no image appears twice in one
global batch (the per-device batch x world size samples that are each other's negatives in the
gathered contrastive loss). The published code shuffles freely, so two caption pairs of one image can
meet in a batch, where each is the other's false negative; with all_pairs (9 samples per ReasonLite
image) that happens in most large batches. Same state and resume as above, plus the global batch
(the order depends on it, so a resume must use the same per-device batch x world size).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence

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


class DistinctImageSampler(ResumableDistributedSampler):
    """Every run of `global_batch` consecutive positions of an epoch's order holds each image at most once.

    `groups[i]` is the image id of sample i (``datasets.image_groups``). Order of an epoch, seeded by
    (seed, epoch): each image's samples are dealt into rounds (its first sample, in a random order of
    its samples, into round 0, the next into round 1, ...); the rounds follow one another, each
    shuffled. A round holds an image once, so only a global batch that straddles two rounds can hold
    an image twice; each such repeat is swapped with the first later sample whose image the batch
    lacks, and the batch that sample came from is checked in turn. The last, incomplete global batch
    is dropped (``drop_last``), as the trainer drops it anyway.
    """

    def __init__(
        self,
        groups: Sequence[int] | np.ndarray,
        global_batch: int,
        rank: int | None = None,
        world_size: int | None = None,
        seed: int = 0,
    ):
        super().__init__(len(groups), rank=rank, world_size=world_size, shuffle=True, seed=seed, drop_last=True)
        if global_batch < 1 or global_batch % self.world_size:
            raise ValueError(f"global batch {global_batch} must be a positive multiple of the world size {self.world_size}")
        self.groups = np.asarray(groups, dtype=np.int64)
        self.global_batch = int(global_batch)
        largest = int(np.bincount(self.groups).max())
        if largest > self.num_samples // self.global_batch:
            raise ValueError(f"an image has {largest} samples but an epoch has only {self.num_samples // self.global_batch} "
                             f"global batches of {self.global_batch}: they cannot all be kept apart (use data.sampler=random)")
        self._cached: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int | None = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else epoch
        if self._cached is None or self._cached[0] != epoch:  # __len__ and __iter__ both ask; build once
            rng = np.random.default_rng([self.seed, epoch, 1])
            self._cached = (epoch, distinct_group_order(self.groups, self.global_batch, rng))
        return self._cached[1]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("global_batch", self.global_batch) != self.global_batch:
            raise ValueError(f"sampler state has global_batch={state['global_batch']}, this run has {self.global_batch} "
                             "(per-device batch x world size must match to resume)")
        super().load_state_dict(state)


def distinct_group_order(groups: np.ndarray, chunk: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(len(groups)) whose full chunks of `chunk` positions repeat no group (see DistinctImageSampler)."""
    n = len(groups)
    sizes = np.bincount(groups)
    shuffled = rng.permutation(n)
    by_group = shuffled[np.argsort(groups[shuffled], kind="stable")]  # grouped, random order inside a group
    sorted_groups = groups[by_group]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[by_group] = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    # Sample r of an image of s samples lands at a random place in [r / s, (r + 1) / s) of the epoch.
    order = np.argsort((rank + rng.random(n)) / sizes[groups], kind="stable")

    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    by_image = np.lexsort((position, groups))
    same_image = groups[by_image][1:] == groups[by_image][:-1]
    later = position[by_image][1:]
    same_chunk = same_image & (later // chunk == position[by_image][:-1] // chunk)
    pending = sorted(set((later[same_chunk] // chunk).tolist()))
    full_chunks = n // chunk
    while pending:
        c = heapq.heappop(pending)
        if c >= full_chunks:
            continue  # the incomplete last chunk is never a batch
        lo, hi = c * chunk, (c + 1) * chunk
        batch_groups = groups[order[lo:hi]]
        _, first = np.unique(batch_groups, return_index=True)
        present = set(batch_groups.tolist())
        j = hi
        for r in np.setdiff1d(np.arange(chunk), first):
            while j < n and int(groups[order[j]]) in present:
                j += 1
            if j < n:  # a later chunk: checked again when its turn comes
                target = j
                if j // chunk not in pending:
                    heapq.heappush(pending, j // chunk)
                j += 1
            else:  # nothing left after this chunk: an earlier one that lacks this image
                target = _earlier_slot(groups, order, chunk, c, int(batch_groups[r]), present)
            present.add(int(groups[order[target]]))
            order[lo + r], order[target] = order[target], order[lo + r]
    return order


def _earlier_slot(groups: np.ndarray, order: np.ndarray, chunk: int, c: int, image: int, present: set[int]) -> int:
    for earlier in range(c):
        slots = order[earlier * chunk : (earlier + 1) * chunk]
        if image in set(groups[slots].tolist()):
            continue
        fits = np.flatnonzero(~np.isin(groups[slots], list(present)))
        if len(fits):
            return earlier * chunk + int(fits[0])
    raise ValueError(f"cannot keep the samples of image {image} in separate global batches of {chunk} (use data.sampler=random)")
