"""Parquet / JSONL readers, trp_cls encodings, skipped images, malformed rows and the collator."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import CLIPImageProcessor

from reasonclip_llava.data import (
    CATEGORIES,
    ReadDataset,
    ReasonCollator,
    ReasonLiteDataset,
    ReasonProDataset,
    ResumableDistributedSampler,
    build_tiny_t5_tokenizer,
    decode_trp_cls,
    generate_synthetic,
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=30, seed=1, write_jsonl=True)


@pytest.fixture(scope="module")
def t5_tokenizer(tmp_path_factory):
    return build_tiny_t5_tokenizer(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="module")
def processor():
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


# ---------------------------------------------------------------- trp_cls


@pytest.mark.parametrize(
    "value",
    [
        {"text": "S", "image": ["S", "A", "P"]},
        {"text": 0, "image": [0, 1, 4]},
        ["S", "S", "A", "P"],
        [0, 0, 1, 4],
        np.array([0, 0, 1, 4]),
        '{"text": "s", "image": ["spatial", "attribute", "physical"]}',
        "[0, 0, 1, 4]",
    ],
)
def test_trp_cls_encodings_decode_alike(value):
    labels = decode_trp_cls(value, "f.parquet row 7")
    assert labels.text == CATEGORIES.index("S")
    assert labels.image == (0, 1, 4)
    assert labels.image_multi_hot() == [1.0, 1.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "value, message",
    [
        ({"text": "X", "image": ["S", "A", "P"]}, "category 'X'"),
        ({"text": "S", "image": ["S", "S", "P"]}, "repeat"),
        ({"text": "S"}, "needs keys"),
        ([0, 1, 2], "4 entries"),
        ([0, 1, 2, 5], "category 5"),
        ({"text": True, "image": [0, 1, 2]}, "category True"),
        ("not json", "not JSON"),
        (7, "must be a dict"),
        ({"text": "S", "image": "SAP"}, "must be a list"),
    ],
)
def test_bad_trp_cls_names_the_row(value, message):
    with pytest.raises(ValueError, match=message) as info:
        decode_trp_cls(value, "data.parquet row 7")
    assert str(info.value).startswith("data.parquet row 7:")
    assert "\n" not in str(info.value)


def test_reasonpro_reads_a_flat_integer_column(tmp_path, synth):
    image_path = str(Path(synth["root"]) / "images" / "000000.png")
    rows = [{"image_path": image_path, "trp": "a caption", "trp_cls": [3, 0, 2, 3]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pro.parquet")
    sample = ReasonProDataset(tmp_path / "pro.parquet")[0]
    assert sample["text_category"] == CATEGORIES.index("T")
    assert sample["image_categories"] == [1.0, 0.0, 1.0, 1.0, 0.0]


def test_reasonpro_bad_trp_cls_names_file_and_row(tmp_path, synth):
    rows = [{"image_path": "images/000000.png", "trp": "x", "trp_cls": json.dumps(v)}
            for v in ([0, 0, 1, 2], [0, 0, 1, 2], [9, 0, 1, 2])]
    path = tmp_path / "pro.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = ReasonProDataset(path, image_root=synth["root"])
    assert dataset[1]["text_category"] == 0
    with pytest.raises(ValueError, match=rf"{path} row 2: category 9"):
        dataset[2]


# ---------------------------------------------------------------- parquet / JSONL datasets


def test_parquet_and_jsonl_give_the_same_samples(synth):
    parquet = ReasonLiteDataset(synth["reasonlite"], seed=5)
    jsonl = ReasonLiteDataset(synth["reasonlite_jsonl"], seed=5)
    assert len(parquet) == len(jsonl) == 24
    for i in (0, 7, 23):
        a, b = parquet[i], jsonl[i]
        assert (a["desc"], a["reason"]) == (b["desc"], b["reason"])
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))


def test_reasonlite_visits_all_nine_pairs_over_nine_epochs(synth):
    dataset = ReasonLiteDataset(synth["reasonlite"], seed=0)
    row = pq.read_table(synth["reasonlite"]).slice(4, 1).to_pylist()[0]
    pairs = []
    for epoch in range(9):
        dataset.set_epoch(epoch)
        sample = dataset[4]
        pairs.append((sample["desc"], sample["reason"]))
    assert sorted(pairs) == sorted((d, r) for d in row["tb"] for r in row["trl"])
    dataset.set_epoch(2)
    assert (dataset[4]["desc"], dataset[4]["reason"]) == pairs[2]  # a pure function of (seed, epoch, index)


def test_pixel_values_come_from_the_image_processor(synth, processor):
    dataset = ReasonProDataset(synth["reasonpro"], image_processor=processor)
    sample = dataset[3]
    image = Image.open(Path(synth["root"]) / pq.read_table(synth["reasonpro"]).column("image_path")[3].as_py())
    expected = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
    assert torch.equal(sample["pixel_values"], expected)


def test_read_samples_use_other_captions_of_the_image(synth):
    row = pq.read_table(synth["reasonlite"]).slice(5, 1).to_pylist()[0]
    # recon_target="other": caption, paraphrase and target are the image's three captions.
    dataset = ReadDataset(synth["reasonlite"], caption_columns=("tb",), k=3, seed=2, recon_target="other")
    for epoch in range(3):
        dataset.set_epoch(epoch)
        sample = dataset[5]
        assert {sample["caption"], sample["paraphrase"], sample["recon_target"]} == set(row["tb"])
        assert len(set(sample["negatives"])) == 3 and sample["caption"] not in sample["negatives"]
    # The published default (READ's collator): the target is drawn from ALL captions, the anchor included.
    dataset = ReadDataset(synth["reasonlite"], caption_columns=("tb",), k=3, seed=2)
    targets = []
    for epoch in range(30):
        dataset.set_epoch(epoch)
        sample = dataset[5]
        assert sample["paraphrase"] != sample["caption"] and sample["recon_target"] in row["tb"]
        targets.append(sample["recon_target"] == sample["caption"])
    assert any(targets) and not all(targets)


def test_read_precomputed_negatives_are_used_first(tmp_path, synth):
    rows = [{"image_path": "images/000000.png", "captions": ["the red cup is on the table"],
             "neg": ["the table is on the red cup"]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "read.parquet")
    sample = ReadDataset(tmp_path / "read.parquet", image_root=synth["root"], k=3)[0]
    assert sample["negatives"][0] == "the table is on the red cup"
    assert len(set(sample["negatives"])) == 3
    assert sample["paraphrase"] == sample["recon_target"] == sample["caption"]  # a single caption


def test_missing_column_null_field_and_missing_key_name_file_and_row(tmp_path):
    rows = [{"image_path": f"{i}.png", "tb": ["a"], "trl": ["b"]} for i in range(5)]
    rows[3]["tb"] = None
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "lite.parquet")
    with pytest.raises(ValueError, match=r"lite\.parquet row 3: field 'tb' is null"):
        ReasonLiteDataset(tmp_path / "lite.parquet")
    pq.write_table(pa.Table.from_pylist([{"image_path": "x.png", "tb": ["a"]}]), tmp_path / "no_trl.parquet")
    with pytest.raises(ValueError, match=r"no_trl\.parquet: missing column\(s\) \['trl'\]"):
        ReasonLiteDataset(tmp_path / "no_trl.parquet")
    lines = [json.dumps({"image_path": "a.png", "tb": ["a"], "trl": ["b"]}), "", json.dumps({"image_path": "b.png", "tb": ["a"]})]
    (tmp_path / "lite.jsonl").write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"lite\.jsonl row 1 \(line 3\): missing field 'trl'"):
        ReasonLiteDataset(tmp_path / "lite.jsonl")
    rows = [{"image_path": "a.png", "tb": [], "trl": ["b"]}]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("image_path", pa.string()), ("tb", pa.list_(pa.string())), ("trl", pa.list_(pa.string()))])), tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match=r"empty\.parquet row 0: field 'tb' must be a non-empty list"):
        ReasonLiteDataset(tmp_path / "empty.parquet")[0]
    with pytest.raises(FileNotFoundError, match="nothing.parquet"):
        ReasonLiteDataset(tmp_path / "nothing.parquet")


# ---------------------------------------------------------------- skipped images


@pytest.fixture()
def lite_with_bad_images(tmp_path, synth):
    rows = pq.read_table(synth["reasonlite"]).to_pylist()[:8]
    for row in rows:
        row["image_path"] = str(Path(synth["root"]) / row["image_path"])
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a jpeg" * 10)
    rows[2]["image_path"] = str(tmp_path / "garbage.jpg")
    rows[5]["image_path"] = str(tmp_path / "missing.jpg")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "lite.parquet")
    return tmp_path / "lite.parquet"


def test_corrupt_and_missing_images_are_skipped_and_counted(lite_with_bad_images, clip_tokenizer, processor):
    dataset = ReasonLiteDataset(lite_with_bad_images, image_processor=processor)
    assert dataset[2] is None and dataset[5] is None
    assert dataset.skipped == 2 and dataset.skipped_paths[0].endswith("garbage.jpg")
    loader = DataLoader(dataset, batch_size=3, sampler=ResumableDistributedSampler(8, shuffle=False),
                        collate_fn=ReasonCollator(clip_tokenizer))
    batches = list(loader)
    assert [b["num_skipped"] for b in batches] == [1, 1, 0]
    assert [b["num_drawn"] for b in batches] == [3, 3, 2]
    assert torch.cat([b["indices"] for b in batches]).tolist() == [0, 1, 3, 4, 6, 7]
    assert batches[0]["pixel_values"].shape == (2, 3, 32, 32)
    assert dataset.skipped == 4


# ---------------------------------------------------------------- collator


def test_collator_shapes_and_negative_layout(synth, clip_tokenizer, t5_tokenizer):
    dataset = ReadDataset(synth["reasonlite"], caption_columns=("tb", "trl"), k=3)
    samples = [dataset[i] for i in range(4)]
    batch = ReasonCollator(clip_tokenizer, t5_tokenizer=t5_tokenizer)(samples)
    length = batch["caption_input_ids"].shape[1]
    assert batch["caption_input_ids"].shape == batch["paraphrase_input_ids"].shape == (4, length)
    assert batch["neg_input_ids"].shape == batch["neg_attention_mask"].shape == (12, length)
    for i, sample in enumerate(samples):
        for j, negative in enumerate(sample["negatives"]):
            row = batch["neg_input_ids"][i * 3 + j][batch["neg_attention_mask"][i * 3 + j].bool()]
            assert row.tolist() == clip_tokenizer(negative)["input_ids"]
        row = batch["caption_input_ids"][i][batch["caption_attention_mask"][i].bool()]
        assert row.tolist() == clip_tokenizer(sample["caption"])["input_ids"]
    assert batch["indices"].tolist() == [0, 1, 2, 3]


def test_recon_labels_are_t5_ids_with_padding_ignored(synth, clip_tokenizer, t5_tokenizer):
    long_text = " ".join(["the red circle is left of the blue square"] * 12)
    samples = [
        {"index": 0, "caption": "a", "recon_target": "a red circle"},
        {"index": 1, "caption": "b", "recon_target": long_text},
    ]
    batch = ReasonCollator(clip_tokenizer, t5_tokenizer=t5_tokenizer)(samples)
    labels = batch["recon_labels"]
    assert labels.shape == (2, 77)  # the long target is cut at 77 T5 tokens
    short = t5_tokenizer("a red circle")["input_ids"]
    assert short[-1] == t5_tokenizer.eos_token_id
    assert labels[0, : len(short)].tolist() == short
    assert (labels[0, len(short) :] == -100).all()
    assert (labels[1] != -100).all()
    assert labels[1].tolist() == t5_tokenizer(long_text, truncation=True, max_length=77)["input_ids"]


def test_collator_categories_max_length_and_errors(synth, clip_tokenizer):
    samples = [ReasonProDataset(synth["reasonpro"])[i] for i in range(3)]
    batch = ReasonCollator(clip_tokenizer, padding="max_length")(samples)
    assert batch["reason_input_ids"].shape == (3, 77)
    assert batch["text_category"].dtype == torch.long and batch["text_category"].shape == (3,)
    assert batch["image_categories"].shape == (3, 5)
    assert batch["image_categories"].sum(1).tolist() == [3.0, 3.0, 3.0]
    assert batch["images"][0].mode == "RGB"
    with pytest.raises(ValueError, match="no t5_tokenizer"):
        ReasonCollator(clip_tokenizer)([{"index": 0, "caption": "a", "recon_target": "b"}])
    empty = ReasonCollator(clip_tokenizer)([None, None])
    assert empty["batch_size"] == 0 and empty["num_skipped"] == 2 and "pixel_values" not in empty


def test_dataset_pickles_for_workers(synth):
    import pickle

    dataset = ReasonLiteDataset(synth["reasonlite"])
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.rows._table is None  # reopened lazily (memory-mapped), not copied
    assert clone[3]["desc"] == dataset[3]["desc"]


def test_precomputed_negatives_column_feeds_read_dataset(tmp_path, synth):
    from reasonclip_llava.data import HardNegativeGenerator, write_negatives

    out = write_negatives(synth["reasonlite"], tmp_path / "with_neg.parquet", caption_columns=("tb",), k=3, seed=9)
    table = pq.read_table(out)
    assert table.schema.field("neg").type == pa.list_(pa.list_(pa.string()))
    row = table.slice(2, 1).to_pylist()[0]
    assert row["neg"][1] == HardNegativeGenerator(k=3, seed=9)(row["tb"][1])
    dataset = ReadDataset(out, image_root=synth["root"], caption_columns=("tb",), k=3, seed=0)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        sample = dataset[2]
        assert sample["negatives"] == row["neg"][row["tb"].index(sample["caption"])]
    bad = table.set_column(table.schema.get_field_index("neg"), "neg", pa.array([[["x"]]] * table.num_rows))
    pq.write_table(bad, tmp_path / "bad_neg.parquet")
    with pytest.raises(ValueError, match=r"bad_neg\.parquet row 0: 'neg' has 1 lists for 3 captions"):
        ReadDataset(tmp_path / "bad_neg.parquet", image_root=synth["root"], caption_columns=("tb",))[0]


@pytest.mark.slow
def test_skipped_images_are_reported_from_worker_processes(lite_with_bad_images, clip_tokenizer):
    dataset = ReasonLiteDataset(lite_with_bad_images)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, sampler=ResumableDistributedSampler(8, shuffle=False),
                        collate_fn=ReasonCollator(clip_tokenizer))
    batches = list(loader)
    assert sum(b["num_skipped"] for b in batches) == 2
    assert sorted(i for b in batches for i in b["indices"].tolist()) == [0, 1, 3, 4, 6, 7]
    assert {b["worker_id"] for b in batches} == {0, 1}
