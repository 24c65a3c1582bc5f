"""Padding-free packing: a packed micro-batch (one row, per-sample position_ids, document-masked attention)
gives the loss and gradients of the padded one for LLaVA-1.5 and LLaVA-NeXT with mixed image / text-only
samples; and a real run with packing and an over-long row trains to the end, counting the row."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from reasonclip_llava.mllm_train.data import IGNORE_INDEX, LlavaConversationDataset, LlavaDataCollator
from reasonclip_llava.mllm_train.train import LlavaTrainConfig, train_llava
from reasonclip_llava.testing.tiny_lm import build_tiny_lm
from reasonclip_llava.vlm.build import build_llava

# fp32 on CPU: the packed and padded forwards sum the same products in another order (one row of 4 samples vs
# 4 rows); measured: |loss diff| 4.8e-7 (LLaVA-1.5) and 0 (LLaVA-NeXT), max |gradient diff| 6.0e-8 (both).
LOSS_TOLERANCE = 1e-5
GRAD_TOLERANCE = dict(rtol=1e-4, atol=1e-6)

ROWS = [
    {"id": "wide", "image": "wide.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the cat?"}, {"from": "gpt", "value": "The cat is red."},
        {"from": "human", "value": "Where is the dog?"}, {"from": "gpt", "value": "On the left of the blue car."}]},
    {"id": "text", "conversations": [
        {"from": "human", "value": "How many birds are there?"}, {"from": "gpt", "value": "Three."}]},
    {"id": "tall", "image": "tall.png", "conversations": [
        {"from": "human", "value": "Describe the image briefly.\n<image>"}, {"from": "gpt", "value": "A green square."}]},
    {"id": "text_long", "conversations": [
        {"from": "human", "value": "What is a cube?"}, {"from": "gpt", "value": "A shape with six square faces, all the same size."},
        {"from": "human", "value": "And a sphere?"}, {"from": "gpt", "value": "A round shape."}]},
]


def random_image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    random_image(70, 30, 0).save(root / "wide.png")
    random_image(25, 60, 1).save(root / "tall.png")
    (root / "rows.json").write_text(json.dumps(ROWS))
    return root, build_tiny_lm(root / "lm", "qwen2")


def gradients(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch,aspect", [("llava", "pad"), ("llava_next", "anyres")])
def test_packed_micro_batch_equals_padded(data, tiny_clip_dir, arch, aspect):
    root, lm = data
    model, processor = build_llava(lm, tiny_clip_dir, arch=arch, image_aspect_ratio=aspect)
    model.eval()  # no dropout anywhere; gradients still flow
    # LLaVA-NeXT's published labels supervise each row's first token (<|im_start|>): packing must not let the
    # previous sample predict it.
    dataset = LlavaConversationDataset(root / "rows.json", root, processor, "qwen_1_5", 4096, image_aspect_ratio=aspect,
                                       label_masking="llava_next")
    items = [dataset[i] for i in range(len(dataset))]
    assert all(item["labels"][0] != IGNORE_INDEX for item in items)
    padded = LlavaDataCollator(processor.tokenizer.pad_token_id)(items)
    packed = LlavaDataCollator(processor.tokenizer.pad_token_id, packing=True)(items)

    lengths = [len(item["input_ids"]) for item in items]
    assert padded["input_ids"].shape == (4, max(lengths)) and packed["input_ids"].shape == (1, sum(lengths))
    assert "attention_mask" not in packed and packed["use_cache"] is False
    assert packed["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    starts = np.cumsum([0, *lengths[:-1]])
    assert all(packed["labels"][0, start] == IGNORE_INDEX for start in starts)
    assert torch.equal(packed["pixel_values"], padded["pixel_values"])

    padded_loss, padded_grads = gradients(model, padded)
    packed_loss, packed_grads = gradients(model, packed)
    assert padded_grads.keys() == packed_grads.keys() and any("vision_tower" in name for name in padded_grads)
    worst = max((packed_grads[n] - padded_grads[n]).abs().max().item() for n in padded_grads)
    print(f"\n[{arch}] loss padded {padded_loss:.8f} packed {packed_loss:.8f} |diff| {abs(packed_loss - padded_loss):.2e}; "
          f"max |grad diff| {worst:.2e} over {len(padded_grads)} tensors")
    assert abs(packed_loss - padded_loss) <= LOSS_TOLERANCE
    for name in padded_grads:
        torch.testing.assert_close(packed_grads[name], padded_grads[name], **GRAD_TOLERANCE, msg=name)

    # The equality rests on the document mask: one row with positions running on (the samples attending to
    # each other) gives another loss.
    leaky = {**packed, "position_ids": torch.arange(sum(lengths))[None]}
    cached = {**packed, "use_cache": True}  # transformers then skips packed-sequence detection
    with torch.no_grad():
        assert abs(model(**cached).loss.item() - padded_loss) > 1e-3
    with torch.no_grad():
        assert abs(model(**leaky).loss.item() - padded_loss) > 1e-3


def test_packed_run_skips_the_over_long_row_and_trains_as_padded(data, tiny_clip_dir, tmp_path, capsys):
    """A real run: the row longer than model_max_length is counted and left out before step 1 (not a crash at
    the step that meets it), and packing logs the padded run's losses."""
    root, lm = data
    long_row = {"id": "too_long", "image": "wide.png", "conversations": [
        {"from": "human", "value": "<image>\n" + "Where is the red cube? " * 60}, {"from": "gpt", "value": "Left."}]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(ROWS + [long_row]))
    histories, summaries = {}, {}
    for packing in (False, True):
        out_dir = train_llava(LlavaTrainConfig(
            arch="llava", language_model=str(lm), vision_tower=str(tiny_clip_dir), template="qwen_1_5",
            image_aspect_ratio="pad", mm_tunable_parts="mm_mlp_adapter,mm_language_model", learning_rate=1e-3,
            data_path=str(path), image_folder=str(root), model_max_length=256, packing=packing,
            per_device_train_batch_size=2, max_steps=2, logging_steps=1, save_steps=100, warmup_ratio=0.0,
            report_to="none", output_dir=str(tmp_path / f"packing_{packing}")))
        state = json.loads((out_dir / "trainer_state.json").read_text())
        histories[packing] = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
        summaries[packing] = state["stateful_callbacks"]["DataSummary"]["args"]["summary"]
        printed = capsys.readouterr().out
        assert f"{out_dir}: 2 steps, 4 rows (1 over model_max_length skipped, 0 truncated), mean loss" in printed
    assert summaries[True] == summaries[False]
    summary = summaries[True]
    assert (summary["rows"], summary["over_length"], summary["skipped"], summary["skipped_ids"]) == (5, 1, 1, ["too_long"])
    assert summary["longest"] > 256
    assert len(histories[True]) == 2 and np.allclose(histories[True], histories[False], rtol=0, atol=1e-4), histories
