"""READ's data rules as READ-CLIP applies them (src/common/mixin.py, src/collators/collator.py @b2f096c):
its hard-negative sampler (stage.negatives=read) and its LLM paraphrases file (data/zero.json).

The tags of each sentence are stated here (as spaCy's en_core_web_sm gives them), and every expected negative
is derived in the comments from READ's rules: swap kinds NOUN / ADJ / ADV (one token), noun chunks of 3+
tokens, verb phrases (every run matching VERB? ADV* AUX* VERB+, overlapping runs included, as spaCy's Matcher
returns them); two spans of one kind exchange places; tokens joined by single spaces; a result equal to the
caption is dropped; one negative = one kept result at random, '' when there is none; 3 independent picks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reasonclip_llava.data.collator import ReasonCollator
from reasonclip_llava.data.hard_negatives import ReadNegativeSampler, TokenDoc, read_swap_spans
from reasonclip_llava.data.rows import ReadSchema, read_paraphrases
from reasonclip_llava.pretrain.config import load_config

REPO = Path(__file__).resolve().parents[1]

# caption -> (tokens, POS tags, noun chunks); spaCy splits the final period off as its own token.
TAGGED = {
    "a dog chases a cat": ("a dog chases a cat".split(), ["DET", "NOUN", "VERB", "DET", "NOUN"], [(0, 2), (3, 5)]),
    "a man holds a kite.": (["a", "man", "holds", "a", "kite", "."], ["DET", "NOUN", "VERB", "DET", "NOUN", "PUNCT"], [(0, 2), (3, 5)]),
    "a photo": (["a", "photo"], ["DET", "NOUN"], [(0, 2)]),
    "a dog and a dog": ("a dog and a dog".split(), ["DET", "NOUN", "CCONJ", "DET", "NOUN"], [(0, 2), (3, 5)]),
    "the big dog chases the small cat": ("the big dog chases the small cat".split(),
                                         ["DET", "ADJ", "NOUN", "VERB", "DET", "ADJ", "NOUN"], [(0, 3), (4, 7)]),
    "a man is running and a woman is walking": ("a man is running and a woman is walking".split(),
                                                ["DET", "NOUN", "AUX", "VERB", "CCONJ", "DET", "NOUN", "AUX", "VERB"], [(0, 2), (5, 7)]),
}

# READ's possible negatives of each caption (derived from the rules above).
POSSIBLE = {
    # NOUN is the only kind with two spans (chunks have 2 tokens; one verb phrase, "chases").
    "a dog chases a cat": {"a cat chases a dog"},
    # the same, and the period stays a token of its own: " ."
    "a man holds a kite.": {"a kite holds a man ."},
    # one noun only: no kind has two spans -> ''
    "a photo": {""},
    # the only swap (dog <-> dog) gives the caption itself, which READ drops -> ''
    "a dog and a dog": {""},
    # NOUN: dog <-> cat; ADJ: big <-> small; NP (3 tokens each): the big dog <-> the small cat
    "the big dog chases the small cat": {"the big cat chases the small dog", "the small dog chases the big cat",
                                         "the small cat chases the big dog"},
    # NOUN: man <-> woman. VP spans: "is running" (2,4), "running" (3,4), "is walking" (7,9), "walking" (8,9);
    # overlapping spans swap as READ swaps them (tokens repeat).
    "a man is running and a woman is walking": {
        "a woman is running and a man is walking",
        "a man running is running and a woman is walking",   # (2,4) <-> (3,4)
        "a man is walking and a woman is running",           # (2,4) <-> (7,9), and (3,4) <-> (8,9)
        "a man walking and a woman is is running",           # (2,4) <-> (8,9)
        "a man is is walking and a woman running",           # (3,4) <-> (7,9)
        "a man is running and a woman walking is walking",   # (7,9) <-> (8,9)
    },
}


def stated_tags(caption: str) -> TokenDoc:
    tokens, pos, chunks = TAGGED[caption]
    return TokenDoc(tuple(tokens), tuple(pos), tuple(chunks))


def test_verb_phrases_are_every_matcher_run_overlaps_included():
    spans = read_swap_spans(stated_tags("a man is running and a woman is walking"))
    assert spans["VP"] == [(2, 4), (3, 4), (7, 9), (8, 9)]
    assert spans["NOUN"] == [(1, 2), (6, 7)] and spans["NP"] == []  # 2-token chunks are not swapped
    assert read_swap_spans(stated_tags("the big dog chases the small cat"))["NP"] == [(0, 3), (4, 7)]


@pytest.mark.parametrize("caption", sorted(POSSIBLE))
def test_read_negatives_are_reads_picks(caption):
    sampler = ReadNegativeSampler(k=3, tagger=stated_tags)
    drawn = [sampler(caption, salt) for salt in range(120)]
    assert all(len(picks) == 3 for picks in drawn)
    seen = {n for picks in drawn for n in picks}
    assert seen == POSSIBLE[caption]  # every possible negative comes up, nothing else does
    if len(POSSIBLE[caption]) > 1:  # independent picks: a caption's 3 negatives may repeat, and do for some draws
        assert any(len(set(picks)) < 3 for picks in drawn) and any(len(set(picks)) == 3 for picks in drawn)
    assert sampler(caption, 7) == ReadNegativeSampler(k=3, tagger=stated_tags)(caption, 7)  # deterministic in (caption, salt)


def test_read_schema_keeps_empty_and_repeated_negatives_and_the_collator_tokenizes_them(clip_tokenizer):
    schema = ReadSchema(("captions",), k=3, negatives="read", negative_generator=ReadNegativeSampler(3, tagger=stated_tags))
    row = {"image_path": "x.jpg", "captions": ["a photo"]}
    assert schema.texts(row, "row 0", key=0, epoch=0, seed=0)["negatives"] == ["", "", ""]
    row = {"image_path": "y.jpg", "captions": ["a dog chases a cat"]}
    texts = schema.texts(row, "row 1", key=1, epoch=0, seed=0)
    assert texts["negatives"] == ["a cat chases a dog"] * 3
    sample = {"index": 0, "pixel_values": torch.zeros(3, 8, 8), "caption": texts["caption"], "negatives": ["", "", ""]}
    batch = ReasonCollator(clip_tokenizer)([sample])
    ids, mask = batch["neg_input_ids"], batch["neg_attention_mask"]
    assert ids.shape[0] == 3 and mask.sum(dim=1).tolist() == [2, 2, 2]  # '' is [BOS, EOS], as READ's processor makes it
    assert ids[0, :2].tolist() == [clip_tokenizer.bos_token_id, clip_tokenizer.eos_token_id]


def test_read_recipes_run_reads_sampler_and_no_clamp():
    for name in ("read_b32", "read_from_stage1_b32", "read_l14_336"):
        config = load_config(REPO / "train" / f"{name}.yaml")
        assert (config.stage.negatives, config.stage.t5_dropout, config.optim.logit_scale_max) == ("read", True, None), name
    assert load_config(REPO / "train" / "stage0_reasoning_b32.yaml").stage.negatives == "distinct"  # the default


# ----------------------------------------------------------------------------------------- zero.json
CAPTIONS = ["a cat on a mat", "a cat sits on a mat", "a grey cat resting", "the mat under a cat", "a cat indoors"]


@pytest.fixture()
def zero_json(tmp_path):
    """READ's data/zero.json format: one JSON object, COCO cocoid (a string) -> list of LLM paraphrases."""
    path = tmp_path / "zero.json"
    path.write_text(json.dumps({"391895": ["a feline lies on a rug", "a rug with a cat lying on it"],
                                "522418": ["a kitten rests on a doormat"]}))
    return path


def test_paraphrases_are_drawn_as_read_draws_them(zero_json):
    schema = ReadSchema(("captions",), k=0, paraphrases=read_paraphrases(zero_json))
    rows = {  # the image found by cocoid, by the number ending its COCO file name, or not in the file
        "cocoid": ({"cocoid": 391895, "image_path": "a.jpg", "captions": CAPTIONS}, ["a feline lies on a rug", "a rug with a cat lying on it"]),
        "file name": ({"image_path": "train2014/COCO_train2014_000000522418.jpg", "captions": CAPTIONS}, ["a kitten rests on a doormat"]),
        "absent": ({"image_path": "COCO_train2014_000000000009.jpg", "captions": CAPTIONS}, []),
    }
    for label, (row, paraphrases) in rows.items():
        drawn = [schema.texts(row, label, key=label, epoch=epoch, seed=0) for epoch in range(200)]
        for texts in drawn:  # READ: the other captions plus the image's paraphrases, never the anchor itself
            assert texts["paraphrase"] != texts["caption"] and texts["paraphrase"] in set(CAPTIONS) | set(paraphrases)
        used = {texts["paraphrase"] for texts in drawn}
        assert used == set(CAPTIONS) | set(paraphrases), label


def test_paraphrase_file_errors_name_the_problem(tmp_path, zero_json):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": ["ok", 3]}))
    with pytest.raises(ValueError, match=r"bad.json: entry '1' must be a list of non-empty strings"):
        read_paraphrases(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object mapping image ids"):
        read_paraphrases(bad)
    with pytest.raises(FileNotFoundError, match="data.paraphrases"):
        read_paraphrases(tmp_path / "missing.json")
    schema = ReadSchema(("captions",), k=0, paraphrases=read_paraphrases(zero_json))
    with pytest.raises(ValueError, match="row 4: data.paraphrases needs the row's image id"):
        schema.texts({"image_path": "photo.jpg", "captions": CAPTIONS}, "row 4", key=4, epoch=0, seed=0)
    required = ["--model.name_or_path=m", "--data.train=d.jsonl", f"--runtime.output_dir={tmp_path}", f"--data.paraphrases={zero_json}"]
    with pytest.raises(ValueError, match="data.paraphrases' is read by the READ alignment term only"):
        load_config(None, [*required, "--stage.name=stage1"])


def test_recipe_paraphrases_reach_the_read_schema(zero_json, tmp_path):
    from reasonclip_llava.pretrain.data import source_schema

    config = load_config(REPO / "train" / "read_b32.yaml", [f"--data.paraphrases={zero_json}"])
    schema = source_schema(config, ["image_path", "captions"])
    assert schema.paraphrases == read_paraphrases(zero_json) and schema.negatives == "read"
    assert "cocoid" in schema.optional  # the key column is read from parquet files too
