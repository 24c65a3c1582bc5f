"""LLaVA conversation dataset, collator and sampler against a tiny LlavaNextForConditionalGeneration."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from reasonclip_llava.mllm_train.data import (
    IGNORE_INDEX,
    LengthGroupedSampler,
    LlavaConversationDataset,
    LlavaDataCollator,
)
from reasonclip_llava.mllm_train.templates import ConversationTemplate
from reasonclip_llava.testing.tiny_lm import build_tiny_lm

PINPOINTS = [[32, 64], [64, 32], [64, 64]]
ROWS = [
    # A wide odd-sized image (-> 2 tiles + base), with the placeholder after the text (LLaVA moves it first).
    {"id": "wide", "image": "wide.png", "conversations": [
        {"from": "human", "value": "What colour is the cat?\n<image>"}, {"from": "gpt", "value": "The cat is red."},
        {"from": "human", "value": "Where is the dog?"}, {"from": "gpt", "value": "On the left."}]},
    {"id": "text", "conversations": [
        {"from": "human", "value": "How many birds are there?"}, {"from": "gpt", "value": "Three."}]},
    # A large near-square image (-> 4 tiles + base).
    {"id": "big", "image": "big.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image briefly."}, {"from": "gpt", "value": "A green square."}]},
]


def random_image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer, LlavaNextImageProcessor, LlavaNextProcessor

    root = tmp_path_factory.mktemp("llava_data")
    lm_dir = build_tiny_lm(root / "lm", "qwen2")
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,  # CLIP's CLS
    )
    random_image(45, 23, 0).save(root / "wide.png")
    random_image(70, 66, 1).save(root / "big.png")
    (root / "data.json").write_text(json.dumps(ROWS))
    return root, lm_dir, processor


def tiny_llava_next(lm_dir, processor):
    from transformers import AutoConfig, CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    text_config = AutoConfig.from_pretrained(lm_dir)
    text_config.vocab_size = len(processor.tokenizer)
    vision_config = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    config = LlavaNextConfig(
        vision_config=vision_config, text_config=text_config, image_grid_pinpoints=PINPOINTS,
        image_token_index=processor.image_token_id, vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    torch.manual_seed(0)
    return LlavaNextForConditionalGeneration(config)


def test_items_and_image_tokens_match_the_model(setup):
    root, lm_dir, processor = setup
    dataset = LlavaConversationDataset(root / "data.json", root, processor, "qwen_1_5", model_max_length=512)
    wide, text, big = dataset[0], dataset[1], dataset[2]
    image_id = processor.image_token_id

    assert wide["id"] == "wide" and wide["pixel_values"].shape == (3, 3, 32, 32)
    assert big["pixel_values"].shape == (5, 3, 32, 32)
    assert wide["image_sizes"].tolist() == [23, 45] and big["image_sizes"].tolist() == [66, 70]
    assert text["pixel_values"] is None and text["image_sizes"] is None
    assert int((text["input_ids"] == image_id).sum()) == 0
    for item in (wide, text, big):
        assert item["input_ids"].dtype == torch.long and item["labels"].shape == item["input_ids"].shape
        # image tokens are never supervised
        assert bool((item["labels"][item["input_ids"] == image_id] == IGNORE_INDEX).all())

    # The image tokens form one contiguous run right after "<|im_start|>user\n" (placeholder moved first).
    ids = wide["input_ids"].tolist()
    run = [i for i, t in enumerate(ids) if t == image_id]
    assert run == list(range(run[0], run[-1] + 1))
    prefix = processor.tokenizer.decode(ids[: run[0]], skip_special_tokens=False)
    assert prefix.endswith("<|im_start|>user\n")
    assert processor.tokenizer.decode(ids[run[-1] + 1:], skip_special_tokens=False).startswith("\nWhat colour is the cat?")

    # Independent count: the number of features the model itself produces for each image.
    model = tiny_llava_next(lm_dir, processor)
    for item in (wide, big):
        with torch.no_grad():
            features = model.model.get_image_features(
                item["pixel_values"][None], item["image_sizes"][None],
                vision_feature_layer=-2, vision_feature_select_strategy="default",
            ).pooler_output
        assert sum(f.shape[0] for f in features) == int((item["input_ids"] == image_id).sum())

    # The supervised tokens are the answers plus <|im_end|>.
    supervised = wide["input_ids"][wide["labels"] != IGNORE_INDEX].tolist()
    assert processor.tokenizer.decode(supervised, skip_special_tokens=False) == "The cat is red.<|im_end|>On the left.<|im_end|>"


def test_image_token_count_from_the_size_alone(setup):
    """The pre-pass counts image tokens from an image's size (no pixels): equal to the features the model makes
    of the image, and never above the pinpoint bound it uses to skip reading headers."""
    root, lm_dir, processor = setup
    dataset = LlavaConversationDataset(root / "data.json", root, processor, "qwen_1_5", model_max_length=512)
    model = tiny_llava_next(lm_dir, processor)
    bound, exact = dataset._image_token_bound()
    assert not exact
    rng = np.random.default_rng(0)
    for width, height in [(64, 32), (32, 64), (64, 64), (1, 1), *rng.integers(8, 200, size=(12, 2)).tolist()]:
        count = dataset.architecture.num_image_tokens(processor, height, width, "anyres")
        pixels = processor.image_processor(images=[random_image(width, height, 0)], return_tensors="pt")
        with torch.no_grad():
            features = model.model.get_image_features(
                pixels["pixel_values"], pixels["image_sizes"], vision_feature_layer=-2, vision_feature_select_strategy="default",
            ).pooler_output
        assert count == sum(f.shape[0] for f in features) <= bound, (width, height)


@pytest.mark.parametrize("pair", [("wide", "text"), ("wide", "big")])
def test_collated_batch_trains_tiny_llava_next(setup, pair):
    root, lm_dir, processor = setup
    dataset = LlavaConversationDataset(root / "data.json", root, processor, "qwen_1_5", model_max_length=512)
    by_id = {dataset[i]["id"]: dataset[i] for i in range(len(dataset))}
    items = [by_id[name] for name in pair]
    batch = LlavaDataCollator(processor.tokenizer.pad_token_id)(items)

    longest = max(len(item["input_ids"]) for item in items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, longest)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        assert batch["input_ids"][row, :n].equal(item["input_ids"]) and batch["labels"][row, :n].equal(item["labels"])
        assert bool((batch["input_ids"][row, n:] == processor.tokenizer.pad_token_id).all())
        assert bool((batch["labels"][row, n:] == IGNORE_INDEX).all())
        assert batch["attention_mask"][row].sum() == n
    images = [item for item in items if item["pixel_values"] is not None]
    most_tiles = max(item["pixel_values"].shape[0] for item in images)
    assert batch["pixel_values"].shape == (len(images), most_tiles, 3, 32, 32)
    assert batch["image_sizes"].tolist() == [item["image_sizes"].tolist() for item in images]
    for row, item in enumerate(images):  # images in batch order, tiles zero-padded at the end
        tiles = item["pixel_values"].shape[0]
        assert batch["pixel_values"][row, :tiles].equal(item["pixel_values"])
        assert not batch["pixel_values"][row, tiles:].any()

    model = tiny_llava_next(lm_dir, processor)
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    projector_grad = model.model.multi_modal_projector.linear_1.weight.grad
    vision_grad = model.model.vision_tower.get_input_embeddings().weight.grad
    assert projector_grad is not None and projector_grad.abs().sum() > 0
    assert vision_grad is not None and vision_grad.abs().sum() > 0


def test_left_padding_and_text_only_batch():
    collator = LlavaDataCollator(pad_token_id=0, padding_side="left")
    items = [
        dict(input_ids=torch.tensor([5, 6, 7]), labels=torch.tensor([-100, 6, 7]), pixel_values=None, image_sizes=None, id="a"),
        dict(input_ids=torch.tensor([8]), labels=torch.tensor([8]), pixel_values=None, image_sizes=None, id="b"),
    ]
    batch = collator(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert "pixel_values" not in batch and "image_sizes" not in batch


def test_pad_mode_single_tile_matches_llava(setup):
    from transformers import AutoConfig, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    root, lm_dir, processor = setup
    dataset = LlavaConversationDataset(root / "data.json", root, processor, "qwen_1_5", 512, image_aspect_ratio="pad")
    wide = dataset[0]
    assert wide["pixel_values"].shape == (1, 3, 32, 32)
    # (32 / 8)^2 patches; the CLS is dropped by the 'default' strategy.
    assert int((wide["input_ids"] == processor.image_token_id).sum()) == 16
    # Padded with the mean colour: the top rows of the 45x23 image are background, i.e. ~0 after normalisation.
    assert wide["pixel_values"][0, :, 0, :].abs().max() < 0.05
    batch = LlavaDataCollator(processor.tokenizer.pad_token_id)([wide, dataset[1]])
    assert batch["pixel_values"].shape == (1, 3, 32, 32)

    text_config = AutoConfig.from_pretrained(lm_dir)
    text_config.vocab_size = len(processor.tokenizer)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2),
        text_config=text_config, image_token_index=processor.image_token_id,
    )
    batch.pop("image_sizes")
    loss = LlavaForConditionalGeneration(config)(**batch).loss
    assert torch.isfinite(loss)

    square = LlavaConversationDataset(root / "data.json", root, processor, "qwen_1_5", 512, image_aspect_ratio="square")[0]
    assert square["pixel_values"].shape == (1, 3, 32, 32) and not square["pixel_values"].equal(wide["pixel_values"])


def test_jsonl_plain_template_and_long_rows(setup, capsys):
    root, _, processor = setup
    path = root / "pretrain.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in [
        {"id": "p0", "image": "wide.png", "conversations": [
            {"from": "human", "value": "Render a caption.\n<image>"}, {"from": "gpt", "value": "A red cat on a mat."}]},
        {"id": "p1", "image": "wide.png", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "Red."}]},
    ]) + "\n")
    dataset = LlavaConversationDataset(path, root, processor, "plain", 512)
    item, short = dataset[0], dataset[1]
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    n_image = ids.count(processor.image_token_id)
    # plain: image tokens, then the caption + "\n", all of it supervised; the human text is dropped.
    assert ids[:n_image] == [processor.image_token_id] * n_image and labels[:n_image] == [IGNORE_INDEX] * n_image
    assert labels[n_image:] == ids[n_image:]
    assert processor.tokenizer.decode(ids[n_image:]) == "A red cat on a mat.\n"
    # The pre-pass measured exactly what the items hold (anyres image tokens included), and said so in one line.
    assert dataset.lengths == [len(ids), len(short["input_ids"])] and len(short["input_ids"]) < len(ids)
    assert dataset.length_summary.longest == len(ids) and dataset.length_summary.longest_exact
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == f"{path}: 2 rows (2 with an image), longest {len(ids)} tokens, 0 over model_max_length 512 " \
                   "(long_rows=skip: 0 skipped); 2 rows train"

    limit = len(short["input_ids"])  # p1 fits exactly, p0 is over
    skipped = LlavaConversationDataset(path, root, processor, "plain", limit)
    assert len(skipped) == 1 and skipped[0]["id"] == "p1" and torch.equal(skipped[0]["input_ids"], short["input_ids"])
    summary = skipped.length_summary
    assert (summary.over_length, summary.skipped, summary.truncated, summary.skipped_ids) == (1, 1, 0, ["p0"])
    assert "1 over model_max_length" in capsys.readouterr().out
    # truncate_text keeps the image and cuts the caption.
    cut = LlavaConversationDataset(path, root, processor, "plain", n_image + 2, long_rows="truncate_text")
    assert [cut[i]["id"] for i in range(len(cut))] == ["p0", "p1"] and cut.length_summary.truncated == sum(n > n_image + 2 for n in dataset.lengths)
    assert cut[0]["input_ids"].tolist() == ids[: n_image + 2] and cut[0]["labels"].tolist() == labels[: n_image + 2]
    with pytest.raises(ValueError, match=rf"pretrain\.jsonl: 1 rows are longer than model_max_length {limit} "
                                         rf"\(longest: sample 'p0', {len(ids)} tokens\); set long_rows"):
        LlavaConversationDataset(path, root, processor, "plain", limit, long_rows="error")
    # Room for the image but for no answer token, or not even for the image: nothing left to train on.
    for limit in (n_image, n_image - 1):
        with pytest.raises(ValueError, match=rf"all 2 rows are longer than model_max_length {limit} \(long_rows=truncate_text\)"):
            LlavaConversationDataset(path, root, processor, "plain", limit, long_rows="truncate_text")


def test_truncate_text_never_cuts_an_image(setup):
    root, _, processor = setup
    chat = [{"from": "human", "value": "How many birds are there? " * 12}, {"from": "gpt", "value": "Three."}]
    rows = [
        {"id": "late_image", "image": "wide.png", "conversations": [*chat, {"from": "human", "value": "<image>\nAnd now?"},
                                                                    {"from": "gpt", "value": "Red."}]},
        {"id": "early_image", "image": "wide.png", "conversations": [{"from": "human", "value": "<image>\nColour?"},
                                                                     {"from": "gpt", "value": "Red. " * 40}]},
        {"id": "text", "conversations": chat},
    ]
    path = write_rows(root, "truncate.json", rows)
    full = LlavaConversationDataset(path, root, processor, "qwen_1_5", 4096)
    late, early, text = (full[i]["input_ids"].tolist() for i in range(3))
    image_id = processor.image_token_id
    limit = late.index(image_id) + 5  # inside late_image's image tokens; after early_image's
    assert early.index(image_id) + early.count(image_id) < limit < len(early) and len(text) <= limit
    cut = LlavaConversationDataset(path, root, processor, "qwen_1_5", limit, long_rows="truncate_text")
    assert [cut[i]["id"] for i in range(len(cut))] == ["early_image", "text"]
    assert (cut.length_summary.truncated, cut.length_summary.skipped_ids) == (1, ["late_image"])
    item = cut[0]
    assert item["input_ids"].tolist() == early[:limit] and item["input_ids"].tolist().count(image_id) == early.count(image_id)
    assert len(cut[1]["input_ids"]) == len(text)


def write_rows(root, name, rows):
    path = root / name
    path.write_text(json.dumps(rows))
    return path


def test_bad_rows_are_named(setup):
    root, _, processor = setup
    good_turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Red."}]
    (root / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    cases = [
        ({"id": "m1", "image": "missing.png", "conversations": good_turns}, FileNotFoundError, r"sample 'm1'.*missing\.png"),
        ({"id": "c1", "image": "corrupt.jpg", "conversations": good_turns}, ValueError, r"sample 'c1'.*corrupt\.jpg"),
        ({"id": "n1", "image": "wide.png"}, ValueError, r"sample 'n1': no 'conversations'"),
        ({"id": "q1", "conversations": [{"from": "human", "value": "Hi?"}]}, ValueError, r"sample 'q1': no supervised"),
        ({"id": "t1", "conversations": good_turns}, ValueError, r"sample 't1': text contains <image>"),
        ({"id": "r1", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}, ValueError, r"sample 'r1'.*alternate"),
    ]
    for row, error, pattern in cases:  # found by the pre-pass, before any step
        with pytest.raises(error, match=pattern) as info:
            LlavaConversationDataset(write_rows(root, "bad.json", [row]), root, processor, "qwen_1_5", 512)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="image_aspect_ratio 'crop'"):
        LlavaConversationDataset(root / "data.json", root, processor, "qwen_1_5", 512, image_aspect_ratio="crop")


def test_mismatch_guard_in_dataset(setup):
    root, _, processor = setup
    bad = ConversationTemplate(name="chatml_space", user_format="<|im_start|>user\n{content}<|im_end|>\n",
                               assistant_prefix="<|im_start|>assistant\nSure, ", assistant_format="{content}<|im_end|>")
    rows = [{"id": "mm-3", "conversations": [{"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "the cat is red."}]}]
    with pytest.raises(ValueError, match="tokenization mismatch in sample 'mm-3' with template 'chatml_space'"):
        LlavaConversationDataset(write_rows(root, "mm.json", rows), root, processor, bad, 512)[0]


def test_tokenizer_without_image_token_is_rejected(setup):
    from transformers import AutoTokenizer, LlavaNextProcessor

    root, lm_dir, processor = setup
    plain_processor = LlavaNextProcessor(
        image_processor=processor.image_processor, tokenizer=AutoTokenizer.from_pretrained(lm_dir), patch_size=8,
        vision_feature_select_strategy="default",
    )
    with pytest.raises(ValueError, match="no '<image>' token"):
        LlavaConversationDataset(root / "data.json", root, plain_processor, "qwen_1_5", 512)


def test_modality_lengths(setup):
    root, _, processor = setup
    dataset = LlavaConversationDataset(root / "data.json", root, processor, "qwen_1_5", 512)
    # word counts (LLaVA's proxy), + with an image, - without
    expected = []
    for row in ROWS:
        words = sum(len(turn["value"].split()) for turn in row["conversations"])
        expected.append(words if "image" in row else -words)
    assert dataset.modality_lengths == expected


def batches_of(indices, size):
    return [indices[i : i + size] for i in range(0, len(indices), size)]


@pytest.mark.parametrize("n_image,n_text,batch_size,world_size", [(37, 23, 4, 2), (32, 16, 4, 2), (50, 0, 3, 1), (0, 7, 2, 3)])
def test_length_grouped_sampler(n_image, n_text, batch_size, world_size):
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(1, 300, n_image)] + [-int(x) for x in rng.integers(1, 300, n_text)]
    order = rng.permutation(len(lengths))
    lengths = [lengths[i] for i in order]  # modalities interleaved in the file
    sampler = LengthGroupedSampler(lengths, batch_size=batch_size, world_size=world_size, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(len(lengths))) and len(sampler) == len(lengths)
    assert list(sampler) == first  # deterministic per (seed, epoch)
    assert list(LengthGroupedSampler(lengths, batch_size, world_size, seed=3)) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == sorted(first) and second != first

    megabatch = batch_size * world_size
    for indices in (first, second):
        mixed = [b for b in batches_of(indices, batch_size) if len({lengths[i] > 0 for i in b}) > 1]
        # Only the leftovers of the two modalities share a batch; none if both fill whole megabatches.
        assert len(mixed) <= 1
        if n_image % megabatch == 0 and n_text % megabatch == 0:
            assert not mixed
        if mixed:
            tail = n_image % megabatch + n_text % megabatch
            assert indices.index(mixed[0][0]) >= len(indices) - tail
        # Full megabatches are modality-pure.
        full = len(indices) - (n_image % megabatch + n_text % megabatch if n_image and n_text else len(indices) % megabatch)
        for start in range(0, full, megabatch):
            chunk = indices[start : start + megabatch]
            assert {lengths[i] > 0 for i in chunk} in ({True}, {False})
    other = list(LengthGroupedSampler(lengths, batch_size, world_size, seed=4))
    assert other != first


def test_length_grouped_sampler_balances_devices():
    # LLaVA's length grouping: each megabatch (one optimizer step over world_size devices) is split so that
    # the devices get similar total lengths. Compare with splitting the same megabatches naively.
    rng = np.random.default_rng(1)
    lengths = [int(x) for x in rng.integers(1, 1000, 400)]
    batch_size, world_size = 4, 4
    indices = list(LengthGroupedSampler(lengths, batch_size, world_size, group_by_modality=False, seed=0))
    assert Counter(indices) == Counter(range(400))
    balanced, naive = 0, 0
    for megabatch in batches_of(indices, batch_size * world_size):
        totals = [sum(lengths[i] for i in device) for device in batches_of(megabatch, batch_size)]
        balanced += max(totals) - min(totals)
        shuffled = sorted(megabatch)  # same samples, split without regard to length
        totals = [sum(lengths[i] for i in device) for device in batches_of(shuffled, batch_size)]
        naive += max(totals) - min(totals)
    assert balanced < 0.2 * naive


def _long_rows(turns: int) -> list[dict]:
    conversation = []
    for i in range(turns // 2):
        conversation += [{"from": "human", "value": f"Where is the red cube number {i}?"},
                         {"from": "gpt", "value": "It is on the left of the blue sphere."}]
    return conversation


@pytest.mark.parametrize("template", ["qwen_1_5", "auto"])
def test_a_600_turn_sample_costs_about_what_a_6_turn_one_does(setup, template):
    """Preparation is linear and truncates as it goes: 100x the turns at model_max_length=128 cost a small
    multiple of the short sample (every prefix used to be rendered and tokenized again: ~10^4 x)."""
    import time

    root, _, processor = setup
    rows = [{"id": "short", "conversations": _long_rows(6)}, {"id": "long", "conversations": _long_rows(600)}]
    dataset = LlavaConversationDataset(write_rows(root, f"long_{template}.json", rows), root, processor, template, 128,
                                       long_rows="truncate_text")

    def best_time(index: int) -> float:
        times = []
        for _ in range(15):
            start = time.perf_counter()
            dataset[index]
            times.append(time.perf_counter() - start)
        return min(times)

    long_item = dataset[1]
    assert len(long_item["input_ids"]) == 128
    # the same tokens the whole conversation gives, cut at 128
    full = LlavaConversationDataset(write_rows(root, f"long_full_{template}.json", rows[1:]), root, processor, template, 100_000)[0]
    assert torch.equal(long_item["input_ids"], full["input_ids"][:128]) and torch.equal(long_item["labels"], full["labels"][:128])
    ratio = best_time(1) / best_time(0)
    assert ratio < 10, f"600 turns took {ratio:.1f}x the time of 6 turns"
