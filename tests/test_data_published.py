"""The published data files as they are: schemas, all_pairs samples, several sources, the held-out split,
bad rows, and the sampler that keeps an image's samples out of one global batch (across ranks, after resume)."""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from published_files import LETTERS, lite_rows, pro_rows, write_images, write_published, write_table
from reasonclip_llava.data import (
    DistinctImageSampler,
    ReadDataset,
    ReasonLiteDataset,
    ReasonProDataset,
    ResumableDistributedSampler,
    image_groups,
)
from reasonclip_llava.pretrain.config import load_config
from reasonclip_llava.pretrain.data import holdout_rows, source_parts, split_source


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_published(tmp_path_factory.mktemp("published"), num_images=20)


def _lite(files, chunk="00", **kwargs):
    return ReasonLiteDataset(files["lite"] / f"cc12m_tb_trl_chunk_{chunk}.parquet", **kwargs)


# ----------------------------------------------------------------------------------------- all_pairs
def test_stage1_all_pairs_is_the_authors_indexing(files):
    dataset = _lite(files, samples="all_pairs")
    rows = lite_rows(files["images"])[:10]
    assert len(dataset) == 9 * len(rows)
    for k in range(len(dataset)):  # METHOD.md: item k -> row k // 9, pair ((k % 9) // 3, k % 3)
        row = rows[k // 9]
        sample = dataset[k]
        assert (sample["desc"], sample["reason"]) == (row["tb"][(k % 9) // 3], row["trl"][k % 3])


def test_one_epoch_visits_every_row_and_pair_exactly_once(files):
    dataset = _lite(files, samples="all_pairs")
    for world_size in (1, 2):
        visits = Counter()
        for rank in range(world_size):
            sampler = ResumableDistributedSampler(len(dataset), rank=rank, world_size=world_size, seed=3)
            for k in sampler:
                sample = dataset[k]
                visits[(sample["image"].getpixel((0, 0)), sample["desc"], sample["reason"])] += 1
        rows = lite_rows(files["images"])[:10]
        assert len(visits) == 9 * len(rows) and set(visits.values()) == {1}  # 90 distinct pairs, once each


def test_per_image_keeps_one_pair_per_image_and_epoch(files):
    dataset = _lite(files)  # the default: one sample per row, the pair cycling over epochs
    assert len(dataset) == 10
    seen = set()
    for epoch in range(9):
        dataset.set_epoch(epoch)
        seen.add((dataset[4]["desc"], dataset[4]["reason"]))
    assert len(seen) == 9


def test_stage0_caption_pools_every_caption_its_own_sample(files):
    trl = ReadDataset(files["lite"] / "cc12m_tb_trl_chunk_00.parquet", caption_columns=("trl",), k=0, samples="all_pairs")
    assert len(trl) == 3 * 10
    assert [trl[k]["caption"] for k in range(6)] == lite_rows(files["images"])[0]["trl"] + lite_rows(files["images"])[1]["trl"]
    tb = ReadDataset(files["refined"] / "cc12m_tb_chunk_00.parquet", caption_columns=("tb",), k=0, samples="all_pairs")
    assert len(tb) == 3 * 20
    trp = ReadDataset(files["pro"] / "cc12m_trp_chunk_00.parquet", caption_columns=("trp",), k=0, samples="all_pairs")
    assert len(trp) == 20 and trp[5]["caption"] == "image 5 physically 1"


# ----------------------------------------------------------------------------------------- several sources
def _config(files, tmp_path, stage, *extra):
    return load_config(None, [f"--model.name_or_path={tmp_path}", f"--data.train={files['lite']}", f"--runtime.output_dir={tmp_path}",
                              f"--stage.name={stage}", *extra])


def test_stage0_reasoning_reads_reasonlite_trl_and_reasonpro_trp(files, tmp_path):
    config = _config(files, tmp_path, "stage0", "--stage.captions=reasoning", "--data.samples=all_pairs", f"--data.sources=[{files['pro']}]")
    lite = source_parts(config, files["lite"], "data.train")
    pro = source_parts(config, files["pro"], "data.sources[0]")
    assert [p.rows.path.name for p in lite] == ["cc12m_tb_trl_chunk_00.parquet", "cc12m_tb_trl_chunk_01.parquet"]
    assert [p.schema.fields for p in lite + pro] == [("trl",), ("trl",), ("trp",)]
    captions = [part[k]["caption"] for part in lite + pro for k in range(len(part))]
    # "ReasonCLIP-58M": 3 trl per ReasonLite row + 1 trp per ReasonPro row
    assert len(captions) == 3 * 20 + 20
    assert Counter(captions) == Counter([c for r in lite_rows(files["images"]) for c in r["trl"]] + [r["trp"] for r in pro_rows(files["images"])])


def test_stage0_descriptive_reads_cc12m_refined(files, tmp_path):
    config = _config(files, tmp_path, "stage0", "--data.samples=all_pairs")
    (part,) = source_parts(config, files["refined"], "data.train")
    assert part.schema.fields == ("tb",) and len(part) == 60


# ----------------------------------------------------------------------------------------- ReasonPro labels
def test_reasonpro_published_labels_and_multi_hot(files):
    dataset = ReasonProDataset(files["pro"] / "cc12m_trp_chunk_00.parquet")
    for i, row in enumerate(pro_rows(files["images"])[:4]):
        sample = dataset[i]
        assert sample["text_category"] == LETTERS.index(row["trp_cls"])
        # multi-hot as the authors build it: zeros.scatter_(1, indices of the 3 letters, 1)
        expected = [1.0 if letter in row["trp_cls_ls"] else 0.0 for letter in LETTERS]
        assert sample["image_categories"] == expected
    assert dataset[0]["image_categories"] == [1.0, 0.0, 0.0, 0.0, 1.0]  # ["P", "P", "S"]


@pytest.mark.parametrize("change, message", [
    ({"trp_cls_ls": ["S", "A"]}, "trp_cls_ls must be a list of exactly 3 letters"),
    ({"trp_cls_ls": ["S", "A", "X"]}, "trp_cls_ls 'X' is not one of the letters S/A/H/T/P"),
    ({"trp_cls": "Q"}, "trp_cls 'Q' is not one of the letters"),
    ({"trp_cls": "spatial"}, "trp_cls 'spatial' is not one of the letters"),
])
def test_bad_reasonpro_rows_name_file_and_row(tmp_path, change, message):
    images = write_images(tmp_path, 3)
    rows = pro_rows(images)
    rows[1].update(change)
    path = write_table(tmp_path / "cc12m_trp_chunk_07.parquet", rows, "pro")
    dataset = ReasonProDataset(path)
    assert dataset[0]["text_category"] == LETTERS.index("P")
    with pytest.raises(ValueError) as error:
        dataset[1]
    text = str(error.value)
    assert text.startswith(f"{path} row 1: ") and message in text and "\n" not in text


def test_missing_image_is_skipped_counted_and_named(tmp_path, caplog):
    images = write_images(tmp_path, 3)
    path = write_table(tmp_path / "cc12m_tb_trl_chunk_00.parquet", lite_rows(images), "lite")
    os.remove(images[2])
    dataset = ReasonLiteDataset(path, samples="all_pairs")
    with caplog.at_level(logging.WARNING):
        samples = [dataset[k] for k in range(len(dataset))]
    assert sum(s is None for s in samples) == 9 and dataset.skipped == 9
    warning = next(r.getMessage() for r in caplog.records if "skipping image" in r.getMessage())
    assert warning.startswith(f"{path} row 2: ") and images[2] in warning and "\n" not in warning


# ----------------------------------------------------------------------------------------- held-out split
def test_holdout_is_the_authors_seeded_split():
    # datasets' train_test_split(test_size, seed=42): ceil(test_size * n) test rows, the first of
    # numpy.random.default_rng(42).permutation(n); the rest train.
    n = 4000
    train, heldout = holdout_rows(n, 0.002, 42)
    assert len(heldout) == math.ceil(0.002 * n) == 8
    assert set(heldout) == set(np.random.default_rng(42).permutation(n)[:8].tolist())
    assert not set(train) & set(heldout) and len(train) + len(heldout) == n
    assert set(holdout_rows(n, 0.002, 42)[1]) == set(heldout)  # seeded: the same every time
    assert set(holdout_rows(n, 0.002, 7)[1]) != set(heldout)


def test_holdout_across_chunks_is_drawn_over_the_whole_source(files, tmp_path):
    config = _config(files, tmp_path, "stage1", "--data.samples=all_pairs")
    train, heldout = split_source(source_parts(config, files["lite"], "data.train"), 0.2, 42)
    expected = set(np.random.default_rng(42).permutation(20)[:4].tolist())  # rows numbered across both chunks in order
    held = {10 * (p.rows.path.name.endswith("01.parquet")) + int(r) for p in heldout for r in p.row_indices}
    kept = {10 * (p.rows.path.name.endswith("01.parquet")) + int(r) for p in train for r in p.row_indices}
    assert held == expected and kept == set(range(20)) - expected
    assert sum(len(p) for p in heldout) == 9 * 4  # all pairs of the held-out rows
    train_images = {p.rows.row(int(r))["image_path"] for p in train for r in p.row_indices}
    assert not train_images & {p.rows.row(int(r))["image_path"] for p in heldout for r in p.row_indices}


# ----------------------------------------------------------------------------------------- distinct-image sampler
def _global_batches(samplers, batch_size):
    """Per step, the union of every rank's next local batch (what the gathered contrastive loss sees)."""
    local = [list(s) for s in samplers]
    steps = min(len(indices) for indices in local) // batch_size
    return [[i for indices in local for i in indices[step * batch_size:(step + 1) * batch_size]] for step in range(steps)]


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_distinct_image_sampler_keeps_images_apart_across_ranks(files, world_size):
    # Stage 0 reasoning: ReasonLite trl (3 per image) + ReasonPro trp (1 per image), the same 20 images.
    lite = ReadDataset(files["lite"] / "cc12m_tb_trl_chunk_00.parquet", caption_columns=("trl",), k=0, samples="all_pairs")
    pro = ReadDataset(files["pro"] / "cc12m_trp_chunk_00.parquet", caption_columns=("trp",), k=0, samples="all_pairs")
    groups = image_groups([lite, pro])
    assert len(groups) == 30 + 20 and len(set(groups.tolist())) == 20  # ReasonPro rows 0..9 share ReasonLite's images
    images = [lite[k]["image"].getpixel((0, 0)) for k in range(len(lite))] + [pro[k]["image"].getpixel((0, 0)) for k in range(len(pro))]
    batch = 8 // world_size
    for epoch in range(3):
        samplers = [DistinctImageSampler(groups, batch * world_size, rank=r, world_size=world_size, seed=1) for r in range(world_size)]
        for s in samplers:
            s.set_epoch(epoch)
        steps = _global_batches(samplers, batch)
        assert len(steps) == len(groups) // 8
        for step in steps:
            assert len({images[i] for i in step}) == len(step) == 8  # no image twice in a global batch
        used = [i for step in steps for i in step]
        assert len(set(used)) == len(used)  # no sample twice in an epoch


def test_plain_shuffle_does_put_an_image_twice_in_a_batch(files):
    # Why the sampler exists: with 9 pairs per image the published shuffle meets repeats at once.
    dataset = _lite(files, samples="all_pairs")
    groups = image_groups([dataset])
    order = ResumableDistributedSampler(len(dataset), world_size=1, rank=0, seed=1).order()
    assert any(len(set(groups[order[i:i + 8]].tolist())) < 8 for i in range(0, len(order) - 7, 8))


@pytest.mark.parametrize("world_size", [1, 2])
def test_distinct_image_sampler_resumes_at_the_exact_sample(files, world_size):
    dataset = _lite(files, samples="all_pairs")
    groups = image_groups([dataset])
    batch, done = 4 // world_size, 5
    uninterrupted = [list(DistinctImageSampler(groups, 4, rank=r, world_size=world_size, seed=2)) for r in range(world_size)]
    states = []
    for rank in range(world_size):
        sampler = DistinctImageSampler(groups, 4, rank=rank, world_size=world_size, seed=2)
        for _ in range(done):
            sampler.advance(batch)
        states.append(sampler.state_dict())
    for rank in range(world_size):
        resumed = DistinctImageSampler(groups, 4, rank=rank, world_size=world_size, seed=2)
        resumed.load_state_dict(states[rank])
        assert list(resumed) == uninterrupted[rank][done * batch:]
    with pytest.raises(ValueError, match="global_batch=4, this run has 8"):
        DistinctImageSampler(groups, 8, rank=0, world_size=world_size, seed=2).load_state_dict(states[0])


def test_distinct_image_sampler_refuses_what_cannot_be_kept_apart():
    groups = np.array([0] * 5 + list(range(1, 12)))  # image 0 has 5 samples; an epoch has 4 batches of 4
    with pytest.raises(ValueError, match="an image has 5 samples but an epoch has only 4 global batches"):
        DistinctImageSampler(groups, 4, rank=0, world_size=1)


TRAIN = Path(__file__).resolve().parents[1] / "train"


def test_recipes_read_the_published_samples():
    for name, samples in (("stage1_b32", "all_pairs"), ("stage2_l14_336", "all_pairs"), ("stage0_reasoning_so400m", "all_pairs"),
                          ("read_b32", "per_image")):
        config = load_config(TRAIN / f"{name}.yaml")
        assert config.data.samples == samples, name
    reasoning = load_config(TRAIN / "stage0_reasoning_b32.yaml").data
    assert reasoning.train.endswith("CLIPReasonLite-42M") and reasoning.sources == ["data/CLIPReasonPro-16M"]
    assert load_config(TRAIN / "stage0_descriptive_l14_336.yaml").data.train.endswith("CC12M-Refined")
    stage1 = load_config(TRAIN / "stage1_l14_336.yaml").data
    assert (stage1.holdout_ratio, stage1.holdout_seed, stage1.eval_every) == (0.002, 42, 0.25)


def test_webdataset_reads_the_published_reasonpro_with_the_same_schema(files, tmp_path):
    from reasonclip_llava.data import write_wds_shards
    from reasonclip_llava.data.rows import ProSchema
    from reasonclip_llava.data.wds import WdsReasonDataset

    shards = write_wds_shards(files["pro"] / "cc12m_trp_chunk_00.parquet", tmp_path / "shards", samples_per_shard=10)
    streamed = list(WdsReasonDataset([str(s) for s in shards], ProSchema(), shuffle_shards=False, world_size=1, rank=0))
    mapped = ReasonProDataset(files["pro"] / "cc12m_trp_chunk_00.parquet")
    assert len(streamed) == len(mapped) == 20
    for i, sample in enumerate(streamed):
        assert (sample["reason"], sample["text_category"], sample["image_categories"]) == \
            (mapped[i]["reason"], mapped[i]["text_category"], mapped[i]["image_categories"])


@pytest.mark.parametrize("option", ["--data.samples=all_pairs", "--data.sampler=distinct_images", "--data.holdout_ratio=0.1"])
def test_webdataset_refuses_what_a_stream_cannot_do_in_one_line(files, tiny_clip_dir, tmp_path, option):
    from types import SimpleNamespace

    from reasonclip_llava.data import write_wds_shards
    from reasonclip_llava.pretrain.data import build_train_data

    write_wds_shards(files["lite"] / "cc12m_tb_trl_chunk_00.parquet", tmp_path / "shards", samples_per_shard=5)
    config = load_config(None, [f"--model.name_or_path={tiny_clip_dir}", f"--data.train={tmp_path / 'shards'}",
                                f"--runtime.output_dir={tmp_path / 'run'}", option])
    with pytest.raises(ValueError) as error:
        build_train_data(config, SimpleNamespace(family="clip"), world_size=1, rank=0)
    text = str(error.value)
    assert text.startswith(f"config key '{option[2:].split('=')[0]}'") and "webdataset" in text and "\n" not in text
