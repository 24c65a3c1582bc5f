"""ResumableDistributedSampler: per-epoch order, rank partition, exact resume."""

import pytest
from torch.utils.data import DataLoader, Dataset

from reasonclip_llava.data import ResumableDistributedSampler, ReasonCollator


def _indices(n, rank=0, world=1, epoch=0, seed=0, **kw):
    sampler = ResumableDistributedSampler(n, rank=rank, world_size=world, seed=seed, **kw)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_order_is_a_deterministic_permutation_per_epoch():
    first = _indices(50, epoch=0)
    assert sorted(first) == list(range(50))
    assert first == _indices(50, epoch=0)
    assert first != _indices(50, epoch=1)
    assert first != _indices(50, epoch=0, seed=1)
    assert _indices(50, shuffle=False) == list(range(50))


def test_two_ranks_partition_the_data():
    a, b = _indices(40, rank=0, world=2, epoch=3), _indices(40, rank=1, world=2, epoch=3)
    assert len(a) == len(b) == 20
    assert not set(a) & set(b) and set(a) | set(b) == set(range(40))
    # interleaved slices of the single-process order
    whole = _indices(40, epoch=3)
    assert a == whole[0::2] and b == whole[1::2]


def test_uneven_split_pads_or_drops():
    a, b = _indices(11, rank=0, world=2), _indices(11, rank=1, world=2)
    assert len(a) == len(b) == 6 and set(a) | set(b) == set(range(11))
    assert len(a + b) - len(set(a + b)) == 1  # one index repeated as padding
    a, b = _indices(11, rank=0, world=2, drop_last=True), _indices(11, rank=1, world=2, drop_last=True)
    assert len(a) == len(b) == 5 and not set(a) & set(b)


@pytest.mark.parametrize("world, consumed", [(1, 0), (1, 13), (2, 7), (3, 12), (2, 999)])
def test_resume_yields_exactly_the_rest_of_the_run(world, consumed):
    for rank in range(world):
        uninterrupted = _indices(37, rank=rank, world=world, epoch=2, seed=4)
        first = ResumableDistributedSampler(37, rank=rank, world_size=world, seed=4)
        first.set_epoch(2)
        first.advance(consumed)
        state = first.state_dict()
        resumed = ResumableDistributedSampler(37, rank=rank, world_size=world, seed=4)
        resumed.load_state_dict(state)
        resumed.set_epoch(2)  # the same epoch keeps the position
        assert list(resumed) == uninterrupted[consumed:]
        assert len(resumed) == len(uninterrupted[consumed:])
        resumed.set_epoch(3)  # the next epoch starts from its beginning
        assert list(resumed) == _indices(37, rank=rank, world=world, epoch=3, seed=4)


class _Indexed(Dataset):
    def __len__(self):
        return 30

    def __getitem__(self, i):
        return {"index": i}


def test_resume_through_a_dataloader(clip_tokenizer):
    collate = ReasonCollator(clip_tokenizer)
    sampler = ResumableDistributedSampler(30, seed=7)
    sampler.set_epoch(1)
    full = [i for b in DataLoader(_Indexed(), batch_size=4, sampler=sampler, collate_fn=collate) for i in b["indices"].tolist()]
    seen = []
    for step, batch in enumerate(DataLoader(_Indexed(), batch_size=4, sampler=sampler, collate_fn=collate)):
        seen += batch["indices"].tolist()
        sampler.advance(batch["num_drawn"])
        if step == 2:
            state = sampler.state_dict()  # "crash" after 3 batches
            break
    resumed = ResumableDistributedSampler(30, seed=7)
    resumed.load_state_dict(state)
    resumed.set_epoch(state["epoch"])
    rest = [i for b in DataLoader(_Indexed(), batch_size=4, sampler=resumed, collate_fn=collate) for i in b["indices"].tolist()]
    assert seen + rest == full


def test_resume_with_another_world_size_keeps_the_global_order():
    old = [ResumableDistributedSampler(20, rank=r, world_size=2, seed=1) for r in range(2)]
    for s in old:
        s.advance(3)  # 6 global positions used
    resumed = ResumableDistributedSampler(20, rank=0, world_size=1, seed=1)
    resumed.load_state_dict(old[0].state_dict())
    assert list(resumed) == _indices(20, seed=1)[6:]


def test_state_from_another_dataset_is_refused():
    state = ResumableDistributedSampler(10).state_dict()
    with pytest.raises(ValueError, match="num_samples=10"):
        ResumableDistributedSampler(11).load_state_dict(state)
    with pytest.raises(ValueError, match="rank 2"):
        ResumableDistributedSampler(10, rank=2, world_size=2)
