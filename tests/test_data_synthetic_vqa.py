"""Synthetic instruction data and held-out benchmarks over the synthetic images."""

import json

import pyarrow.parquet as pq
import pytest

from reasonclip_llava.data import generate_synthetic
from reasonclip_llava.data.synthetic_vqa import QUESTION_KINDS, generate_synthetic_vqa
from reasonclip_llava.evaluation.benchmarks import load_questions, read_items


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    data = generate_synthetic(root, num_images=30, seed=3)
    return data, generate_synthetic_vqa(root, num_images=30, seed=3)


def test_instruction_data_points_at_the_training_images(synthetic):
    data, vqa = synthetic
    train_images = {row["image_path"] for row in pq.read_table(data["reasonlite"]).to_pylist()}
    descriptive = {row["image_path"]: " ".join(row["tb"]) for row in pq.read_table(data["reasonlite"]).to_pylist()}
    pretrain, instruct = json.loads(vqa["pretrain"].read_text()), json.loads(vqa["instruct"].read_text())
    assert {row["image"] for row in pretrain} == {row["image"] for row in instruct} == train_images
    for row in pretrain:  # the plain-template caption is one of the image's own descriptive captions
        assert row["conversations"][1]["value"] in descriptive[row["image"]]
    for row in instruct:
        turns = row["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt", "human", "gpt"]
        assert turns[0]["value"].startswith("<image>\n") and "<image>" not in turns[2]["value"]
        for question, answer in ((turns[0]["value"], turns[1]["value"]), (turns[2]["value"], turns[3]["value"])):
            if question.startswith("What colour"):
                assert answer in descriptive[row["image"]]  # the colour appears in the image's descriptions


def test_held_out_benchmarks_load_with_the_released_format_readers(synthetic):
    data, vqa = synthetic
    held_out = pq.read_table(data["swap_eval"]).column("image_path").to_pylist()
    gqa = load_questions("gqa", vqa["gqa"], vqa["gqa_images"])
    pope = load_questions("pope", vqa["pope"].parent, vqa["pope_images"])
    assert len(pope) == len(set(held_out)) == 6 and len(gqa) == 6 * len(QUESTION_KINDS)
    kinds = [item.meta["semantic"] for item in read_items("gqa", vqa["gqa"])]  # one question of every kind per image
    assert sorted(kinds) == sorted(QUESTION_KINDS * 6)
    labels = [item.answer for item in read_items("pope", vqa["pope"].parent)]
    assert set(labels) <= {"yes", "no"}
    sugarcrepe = {p.name for p in vqa["sugarcrepe"].iterdir()}
    assert sugarcrepe == {"swap_att.json", "swap_obj.json"}
    rows = json.loads((vqa["sugarcrepe"] / "swap_obj.json").read_text())
    for row in rows.values():  # a swap negative has the caption's bag of words but differs
        assert sorted(row["caption"].split()) == sorted(row["negative_caption"].split()) and row["caption"] != row["negative_caption"]
        assert (vqa["encoder_images"] / row["filename"]).is_file()
