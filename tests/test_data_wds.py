"""Webdataset shards: split by rank and worker, every sample once, exact resume, skipped images."""

import io
import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from reasonclip_llava.data import LiteSchema, ProSchema, ReasonCollator, WdsReasonDataset, write_wds_shards
from reasonclip_llava.data.synthetic import generate_synthetic

SAMPLES_PER_SHARD = 6


def _jpeg(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """4 shards x 6 samples written with webdataset.TarWriter: .jpg + .json (tb/trl) + .txt."""
    out = tmp_path_factory.mktemp("shards")
    paths = []
    for s in range(4):
        paths.append(str(out / f"part-{s:04d}.tar"))
        with wds.TarWriter(paths[-1]) as writer:
            for i in range(SAMPLES_PER_SHARD):
                key = f"{s:02d}{i:04d}"
                meta = {"tb": [f"a red box {key}", f"a box {key}", f"red {key}"], "trl": [f"reason {key}"]}
                writer.write({"__key__": key, "jpg": _jpeg((10 * i, 0, 0)), "json": meta, "txt": meta["tb"][0]})
    return paths


def _keys(batches):
    # the key is embedded in every caption: "... <key>"
    return [desc.split()[-1] for batch in batches for desc in batch]


def _collect(dataset, workers, batch_size=4):
    """Descriptions read through a DataLoader (batches of raw sample dicts)."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=lambda s: s)
    return [[x["desc"] for x in batch if x is not None] for batch in loader]


def test_shards_are_partitioned_by_rank_and_worker(shards):
    owners = Counter()
    for rank in range(2):
        dataset = WdsReasonDataset(shards, LiteSchema(), rank=rank, world_size=2, seed=3)
        for worker in range(2):
            owners.update(dataset.shards_for(worker, 2))
    assert owners == Counter(shards)  # every shard read by exactly one (rank, worker)
    dataset = WdsReasonDataset(shards, LiteSchema(), rank=0, world_size=1, seed=3)
    assert dataset.shards_for(0, 1, epoch=0) != dataset.shards_for(0, 1, epoch=1)


def test_two_ranks_in_process_read_every_sample_once(shards):
    keys = []
    for rank in range(2):
        keys += _keys(_collect(WdsReasonDataset(shards, LiteSchema(), rank=rank, world_size=2), workers=0))
    assert sorted(keys) == sorted(f"{s:02d}{i:04d}" for s in range(4) for i in range(SAMPLES_PER_SHARD))


@pytest.mark.slow
def test_two_ranks_two_workers_read_every_sample_once(shards):
    keys = []
    for rank in range(2):
        keys += _keys(_collect(WdsReasonDataset(shards, LiteSchema(), rank=rank, world_size=2), workers=2))
    assert Counter(keys) == Counter(f"{s:02d}{i:04d}" for s in range(4) for i in range(SAMPLES_PER_SHARD))


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [1, 3, 4])
def test_resume_mid_epoch_with_two_workers(shards, clip_tokenizer, stop_after):
    def run(dataset, stop_after=None):
        loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=ReasonCollator(clip_tokenizer))
        seen = []
        for step, batch in enumerate(loader):
            seen += batch["indices"].tolist()
            dataset.advance(batch)
            if step + 1 == stop_after:
                break
        return seen

    full = WdsReasonDataset(shards, LiteSchema(), seed=1, rank=0, world_size=1)
    full.set_epoch(2)
    everything = run(full)
    first = WdsReasonDataset(shards, LiteSchema(), seed=1, rank=0, world_size=1)
    first.set_epoch(2)
    head = run(first, stop_after=stop_after)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = WdsReasonDataset(shards, LiteSchema(), seed=1, rank=0, world_size=1)
    resumed.load_state_dict(state)
    tail = run(resumed)
    assert len(head) == 4 * stop_after and sorted(head + tail) == sorted(everything) and len(set(everything)) == 24
    assert head + tail == everything  # same batches in the same order


def test_resume_in_process_skips_whole_shards_when_sizes_are_known(shards):
    dataset = WdsReasonDataset(shards, LiteSchema(), shuffle_shards=False, rank=0, world_size=1)
    everything = [s["desc"] for s in dataset]
    for sizes in (None, {path: SAMPLES_PER_SHARD for path in shards}):
        resumed = WdsReasonDataset(shards, LiteSchema(), shuffle_shards=False, rank=0, world_size=1, shard_sizes=sizes)
        resumed.load_state_dict({"epoch": 0, "num_workers": 1, "world_size": 1, "consumed": {"0": 9}})
        assert [s["desc"] for s in resumed] == everything[9:]


def test_resume_refuses_another_worker_count(shards):
    dataset = WdsReasonDataset(shards, LiteSchema(), rank=0, world_size=1)
    dataset.load_state_dict({"epoch": 0, "num_workers": 2, "world_size": 1, "consumed": {"0": 4}})
    with pytest.raises(ValueError, match="saved with 2 workers"):
        next(iter(dataset))
    with pytest.raises(ValueError, match="world_size 2"):
        dataset.load_state_dict({"epoch": 0, "world_size": 2})


def test_corrupt_image_is_skipped_and_missing_field_names_the_sample(tmp_path, clip_tokenizer):
    path = str(tmp_path / "bad.tar")
    with wds.TarWriter(path) as writer:
        writer.write({"__key__": "good", "jpg": _jpeg((1, 2, 3)), "json": {"trp": "ok", "trp_cls": [0, 0, 1, 2]}})
        writer.write({"__key__": "garbage", "jpg": b"not a jpeg", "json": {"trp": "x", "trp_cls": [0, 0, 1, 2]}})
        writer.write({"__key__": "noimage", "json": {"trp": "y", "trp_cls": [0, 0, 1, 2]}})
        writer.write({"__key__": "nolabel", "jpg": _jpeg((1, 2, 3)), "json": {"trp": "z"}})
    dataset = WdsReasonDataset([path], ProSchema(), rank=0, world_size=1)
    loader = DataLoader(dataset, batch_size=3, collate_fn=ReasonCollator(clip_tokenizer))
    stream = iter(loader)
    batch = next(stream)
    assert batch["batch_size"] == 1 and batch["num_skipped"] == 2 and dataset.skipped == 2
    assert batch["text_category"].tolist() == [0]
    with pytest.raises(ValueError, match=r"bad\.tar sample nolabel: missing field 'trp_cls'"):
        next(stream)


def test_write_shards_round_trip(tmp_path):
    paths = generate_synthetic(tmp_path / "synth", num_images=12, seed=0)
    shard_paths = write_wds_shards(paths["reasonpro"], tmp_path / "shards", samples_per_shard=4)
    assert len(shard_paths) == 3  # 10 training rows -> 4 + 4 + 2
    dataset = WdsReasonDataset([str(p) for p in shard_paths], ProSchema(), shuffle_shards=False, rank=0, world_size=1)
    streamed = list(dataset)
    rows = pq.read_table(paths["reasonpro"]).to_pylist()
    assert [s["reason"] for s in streamed] == [r["trp"] for r in rows]
    original = Image.open(paths["root"] / rows[0]["image_path"]).convert("RGB")
    assert np.array_equal(np.asarray(streamed[0]["image"]), np.asarray(original))  # PNG bytes kept as they were
