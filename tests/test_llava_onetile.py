"""The LLaVA-1.5 format ReasonCLIP published (arch 'llava'): build -> stage A square -> stage B pad/flat
(full, LoRA) -> merge -> plain LlavaForConditionalGeneration answers; image-token counts against the
transformers processor; the tower after training is the trained one; verify's LLaVA mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from reasonclip_llava.cli import main
from reasonclip_llava.evaluation.benchmarks import VQAQuestion
from reasonclip_llava.evaluation.generate import generate_answers
from reasonclip_llava.vlm.architectures import LlavaImageProcessor, tokens_per_tile
from reasonclip_llava.vlm.build import build_llava, save_llava
from reasonclip_llava.mllm_train.data import IGNORE_INDEX, LlavaConversationDataset
from reasonclip_llava.mllm_train.merge import merge_and_export
from reasonclip_llava.vlm.swap import swap_vision_tower
from reasonclip_llava.vlm.tower_check import TOWER_CHECK_NAME, compare_towers, require_saved_tower
from reasonclip_llava.mllm_train.train import NON_LORA_TRAINABLES, LlavaTrainConfig, load_train_config, train_llava
from reasonclip_llava.testing.tiny import save_tiny_clip

from llava_train_helpers import tiny_llava_stages  # tests/ helper module

REPO = Path(__file__).resolve().parents[1]
COMMON = dict(per_device_train_batch_size=2, logging_steps=1, report_to="none", warmup_ratio=0.0, save_steps=100)
PROMPT = "<|im_start|>user\n<image>\nWhat colour is the square?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_clip_dir):
    return tiny_llava_stages(tmp_path_factory.mktemp("llava15"), tiny_clip_dir, n_instruct_images=4)


@pytest.fixture(scope="module")
def stage_a(setup):
    return train_llava(LlavaTrainConfig(
        arch="llava", language_model=setup["lm"], vision_tower=setup["encoder"], template="plain",
        image_aspect_ratio="square", mm_patch_merge_type="flat", mm_tunable_parts="mm_mlp_adapter",
        learning_rate=1e-3, max_steps=2, output_dir=str(setup["root"] / "stage_a"), **setup["pretrain"], **COMMON,
    ))


def stage_b(setup, stage_a, name: str, **overrides) -> Path:
    values = dict(model_name_or_path=str(stage_a), template="qwen_1_5", image_aspect_ratio="pad",
                  mm_patch_merge_type="flat", max_steps=2, output_dir=str(setup["root"] / name),
                  **setup["instruct"], **COMMON)
    return train_llava(LlavaTrainConfig(**{**values, **overrides}))


@pytest.fixture(scope="module")
def stage_b_full(setup, stage_a):
    return stage_b(setup, stage_a, "stage_b_full", mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model",
                   learning_rate=1e-3, mm_vision_tower_lr=1e-3)


def plain_load(run_dir: Path):
    return LlavaForConditionalGeneration.from_pretrained(run_dir), LlavaProcessor.from_pretrained(run_dir)


def answers(model, processor, image_folder: str) -> torch.Tensor:
    inputs = processor(images=Image.open(Path(image_folder) / "1.png"), text=PROMPT, return_tensors="pt")
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values"}  # no image_sizes: one tile
    output = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3
    return output


def tower_of(model) -> dict[str, torch.Tensor]:
    return model.model.vision_tower.state_dict()


# ---- build: the LLaVA-1.5 format --------------------------------------------------------------------


def test_build_is_transformers_llava_with_one_tile(setup, tmp_path):
    model, processor = build_llava(setup["lm"], setup["encoder"], arch="llava", image_aspect_ratio="pad")
    assert type(model) is LlavaForConditionalGeneration and type(processor) is LlavaProcessor
    assert model.config.vision_feature_select_strategy == "default" and model.config.vision_feature_layer == -2
    assert model.config.image_seq_length == (32 // 8) ** 2  # tiny tower: 32 px, patch 8, CLS dropped
    assert not hasattr(model.model, "image_newline")
    reference = CLIPModel.from_pretrained(setup["encoder"]).vision_model.state_dict()
    assert all(torch.equal(tower_of(model)[name], tensor) for name, tensor in reference.items())
    assert processor.image_processor.do_pad is True
    saved = save_llava(model, processor, tmp_path / "llava")
    reloaded, reprocessor = plain_load(saved)
    assert reprocessor.image_processor.do_pad is True
    answers(reloaded, reprocessor, setup["instruct"]["image_folder"])


def test_siglip_tower_keeps_every_patch_in_one_tile(setup, tiny_siglip_dir):
    model, processor = build_llava(setup["lm"], tiny_siglip_dir, arch="llava", image_aspect_ratio="pad")
    assert model.config.vision_feature_select_strategy == "full"  # SigLIP has no CLS to drop
    dataset = LlavaConversationDataset(setup["instruct"]["data_path"], setup["instruct"]["image_folder"], processor,
                                       "qwen_1_5", 512, image_aspect_ratio="pad")
    item = dataset[1]
    image = Image.open(Path(setup["instruct"]["image_folder"]) / "1.png")
    by_processor = processor(images=image, text="<image>\nhi", return_tensors="pt")
    assert int((item["input_ids"] == processor.image_token_id).sum()) == int(
        (by_processor["input_ids"] == processor.image_token_id).sum()) == model.config.image_seq_length == 16
    batch = {"input_ids": item["input_ids"][None], "labels": item["labels"][None], "pixel_values": item["pixel_values"]}
    assert torch.isfinite(model(**batch).loss)


def test_cli_builds_either_architecture(setup, tmp_path, capsys):
    assert main(["llava-build", "--lm", setup["lm"], "--encoder", setup["encoder"], "--out", str(tmp_path / "sq"),
                 "--arch", "llava", "--image-aspect-ratio", "square"]) == 0
    model, processor = plain_load(tmp_path / "sq")
    assert model.config.model_type == "llava" and processor.image_processor.do_pad is False
    capsys.readouterr()
    assert main(["llava-build", "--lm", setup["lm"], "--encoder", setup["encoder"], "--out", str(tmp_path / "bad"),
                 "--arch", "llava", "--image-aspect-ratio", "anyres"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "architecture 'llava'" in error and not (tmp_path / "bad").exists()


def test_published_size_has_576_image_tokens(setup):
    # METHOD.md: one 336 px tile, 576 image tokens; counted here by transformers' LlavaProcessor itself.
    vision = CLIPVisionConfig(image_size=336, patch_size=14)
    assert tokens_per_tile(vision, "default") == 576
    _, small = build_llava(setup["lm"], setup["encoder"], arch="llava")  # for its tokenizer
    image_processor = LlavaImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_pad=True)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=small.tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    inputs = processor(images=Image.new("RGB", (500, 300)), text="<image>\nhi", return_tensors="pt")
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 576


@pytest.mark.parametrize("aspect", ["pad", "square"])
def test_dataset_image_tokens_and_pixels_match_the_processor(setup, aspect):
    model, processor = build_llava(setup["lm"], setup["encoder"], arch="llava", image_aspect_ratio=aspect)
    dataset = LlavaConversationDataset(setup["instruct"]["data_path"], setup["instruct"]["image_folder"], processor,
                                       "qwen_1_5", 512, image_aspect_ratio=aspect)
    image = Image.open(Path(setup["instruct"]["image_folder"]) / "1.png").convert("RGB")  # 64 x 48, not square
    item = dataset[1]
    by_processor = processor(images=image, text="<image>\nWhat colour is the square?", return_tensors="pt")
    assert int((item["input_ids"] == processor.image_token_id).sum()) == int(
        (by_processor["input_ids"] == processor.image_token_id).sum()) == 16
    assert item["image_sizes"] is None and item["pixel_values"].shape == (1, 3, 32, 32)
    # LLaVA's own preprocessing, written out: expand2square with int(mean * 255) for pad, then the
    # encoder's CLIP processor (resize the short side + centre crop).
    clip = CLIPImageProcessor.from_pretrained(setup["encoder"])
    if aspect == "pad":
        side = max(image.size)
        canvas = Image.new("RGB", (side, side), tuple(int(x * 255) for x in clip.image_mean))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = canvas
    expected = torch.as_tensor(np.array(clip(images=image)["pixel_values"]))
    assert torch.allclose(item["pixel_values"], expected, atol=1e-5)
    batch = {k: v.unsqueeze(0) for k, v in item.items() if k in ("input_ids", "labels", "pixel_values")}
    batch["pixel_values"] = batch["pixel_values"][0]
    assert torch.isfinite(model(**batch).loss)


def test_flags_the_architecture_cannot_do_get_one_line(setup, tmp_path, capsys):
    base = dict(language_model=setup["lm"], vision_tower=setup["encoder"], **setup["pretrain"])
    with pytest.raises(ValueError, match="architecture 'llava' .*takes pad/square \\+ flat; use arch 'llava_next'"):
        LlavaTrainConfig(**base, arch="llava", image_aspect_ratio="anyres").validate()
    with pytest.raises(ValueError, match="'pad' \\+ mm_patch_merge_type 'spatial_unpad': architecture 'llava_next'"):
        LlavaTrainConfig(**base, image_aspect_ratio="pad").validate()
    with pytest.raises(ValueError, match="mm_patch_merge_type 'spatial_unpad'.*architecture 'llava'"):
        LlavaTrainConfig(**base, arch="llava", mm_patch_merge_type="spatial_unpad").validate()
    with pytest.raises(ValueError, match="unknown LLaVA architecture 'llava2'"):
        LlavaTrainConfig(**base, arch="llava2").validate()
    with pytest.raises(ValueError, match="label_masking 'llava_next' is LLaVA-NeXT's preprocess_qwen / preprocess_llama3 rule .*'vicuna_v1' is not one"):
        _, processor = build_llava(setup["lm"], setup["encoder"], arch="llava")
        LlavaConversationDataset(setup["pretrain"]["data_path"], None, processor, "vicuna_v1", 64,
                                 image_aspect_ratio="pad", label_masking="llava_next")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(dict(base, arch="llava", image_aspect_ratio="anyres")))
    capsys.readouterr()
    assert main(["llava-train", str(recipe)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "image_aspect_ratio 'anyres'" in error


def test_published_recipes_carry_the_published_values():
    pretrain = load_train_config(REPO / "train/llava_reasonclip_pretrain.yaml")
    assert (pretrain.arch, pretrain.image_aspect_ratio, pretrain.mm_patch_merge_type) == ("llava", "square", "flat")
    assert (pretrain.template, pretrain.mm_tunable_parts, pretrain.learning_rate) == ("plain", "mm_mlp_adapter", 1e-3)
    assert pretrain.deepspeed == "train/zero2.json" and pretrain.model_max_length == 8192
    assert pretrain.per_device_train_batch_size * pretrain.gradient_accumulation_steps * 8 == 256
    assert pretrain.language_model == "Qwen/Qwen3-1.7B" and pretrain.mm_vision_select_layer == -2
    finetune = load_train_config(REPO / "train/llava_reasonclip_finetune.yaml")
    assert (finetune.image_aspect_ratio, finetune.mm_patch_merge_type, finetune.template) == ("pad", "flat", "qwen_1_5")
    assert set(finetune.tunable_parts) == {"mm_vision_tower", "mm_mlp_adapter", "mm_language_model"}
    assert (finetune.learning_rate, finetune.mm_vision_tower_lr) == (1e-5, 2e-6)
    assert finetune.deepspeed == "train/zero3.json" and finetune.num_train_epochs == 1
    assert finetune.per_device_train_batch_size * finetune.gradient_accumulation_steps * 8 == 64
    assert json.loads((REPO / "train/zero3.json").read_text())["zero_optimization"]["stage"] == 3
    # the LLaVA-NeXT anyres recipes stay beside them
    assert load_train_config(REPO / "train/llava_next_finetune.yaml").image_aspect_ratio == "anyres"


# ---- stage A (square) -> stage B (pad/flat, full and LoRA) -> merge ----------------------------------


@pytest.mark.slow
def test_stage_a_square_trains_only_the_projector(setup, stage_a):
    trained, processor = plain_load(stage_a)
    assert processor.image_processor.do_pad is False  # square: short side + centre crop
    fresh, _ = build_llava(setup["lm"], setup["encoder"], arch="llava")
    changed = {n for n, t in fresh.state_dict().items() if not torch.equal(t, trained.state_dict()[n])}
    assert changed and all("multi_modal_projector" in name for name in changed)
    report = json.loads((stage_a / TOWER_CHECK_NAME).read_text())
    assert report["saved"] and report["bitwise_equal"] and report["nonfinite_values"] == 0


@pytest.mark.slow
def test_stage_b_full_pad_flat_trains_the_tower_and_saves_it(setup, stage_a, stage_b_full):
    before, _ = plain_load(stage_a)
    after, processor = plain_load(stage_b_full)
    assert processor.image_processor.do_pad is True  # serves as it trained
    for module in ("vision_tower", "multi_modal_projector", "language_model"):
        a, b = getattr(before.model, module).state_dict(), getattr(after.model, module).state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a), f"{module} did not change"
    report = json.loads((stage_b_full / TOWER_CHECK_NAME).read_text())
    assert report["bitwise_equal"] and report["tensors"] == len(tower_of(after)) and report["nonfinite_values"] == 0
    answers(after, processor, setup["instruct"]["image_folder"])

    # eval vqa reads the same checkpoint (batched, one tile)
    image = str(Path(setup["instruct"]["image_folder"]) / "1.png")
    questions = [VQAQuestion("q1", image, "What colour is the square?", 3), VQAQuestion("q2", image, "Shape?", 3),
                 VQAQuestion("q3", None, "How many birds?", 3)]
    out = generate_answers(stage_b_full, questions, setup["root"] / "answers.jsonl", batch_size=2, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert "header" in rows[0] and [row["question_id"] for row in rows[1:]] == ["q1", "q2", "q3"]


@pytest.mark.slow
def test_verify_llava_mode_says_how_far_the_tower_moved(setup, stage_a, stage_b_full, capsys):
    assert main(["verify", str(stage_a), "--encoder", setup["encoder"], "--require-equal"]) == 0
    frozen = json.loads(capsys.readouterr().out)
    assert frozen["bitwise_equal"] and frozen["max_abs_diff"] == 0.0 and frozen["architecture"] == "llava"

    assert main(["verify", str(stage_b_full), "--encoder", setup["encoder"]]) == 0
    moved = json.loads(capsys.readouterr().out)
    encoder = CLIPModel.from_pretrained(setup["encoder"]).vision_model.state_dict()
    trained = tower_of(plain_load(stage_b_full)[0])
    delta = torch.cat([(trained[n] - t).flatten().double() for n, t in encoder.items()])
    norm = torch.cat([t.flatten().double() for t in encoder.values()])
    assert not moved["bitwise_equal"] and moved["tensors_changed"] > 0 and moved["verdict"] == "fine-tuned from ENC"
    assert moved["max_abs_diff"] == pytest.approx(float(delta.abs().max()))
    assert moved["relative_change"] == pytest.approx(float(delta.norm() / norm.norm()))
    assert main(["verify", str(stage_b_full), "--encoder", setup["encoder"], "--require-equal"]) == 1
    capsys.readouterr()

    # a NaN in the saved tower is caught
    broken = setup["root"] / "broken"
    model, processor = plain_load(stage_b_full)
    with torch.no_grad():
        model.model.vision_tower.embeddings.patch_embedding.weight[0, 0, 0, 0] = float("nan")
    save_llava(model, processor, broken)
    assert main(["verify", str(broken), "--encoder", setup["encoder"]]) == 1
    assert "finite" in json.loads(capsys.readouterr().out)["failed"]


def test_stale_or_nan_towers_are_refused():
    trained = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    assert require_saved_tower(trained, {k: v.clone() for k, v in trained.items()}, "run")["bitwise_equal"]
    stale = {"w": torch.tensor([1.0, 2.5]), "b": torch.tensor([0.5])}  # e.g. the encoder's weights again
    with pytest.raises(RuntimeError, match="run: the saved vision tower is not the trained one"):
        require_saved_tower(trained, stale, "run")
    report = compare_towers(trained, stale)
    assert report["max_abs_diff"] == 0.5 and report["relative_change"] == pytest.approx(0.5 / (1 + 4 + 0.25) ** 0.5)
    with pytest.raises(RuntimeError, match="holds 1 NaN/inf"):
        nan = {"w": torch.tensor([1.0, float("nan")]), "b": torch.tensor([0.5])}
        require_saved_tower(nan, {k: v.clone() for k, v in nan.items()}, "run")
    with pytest.raises(RuntimeError, match="not the trained one"):
        require_saved_tower(trained, {"w": trained["w"]}, "run")


@pytest.mark.slow
def test_lora_with_tower_merges_into_plain_llava(setup, stage_a):
    run_dir = stage_b(setup, stage_a, "lora", mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model",
                      lora_enable=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-2,
                      mm_projector_lr=1e-3, mm_vision_tower_lr=1e-3)
    side = load_file(run_dir / NON_LORA_TRAINABLES)
    side_tower = {n.removeprefix("model.vision_tower."): t for n, t in side.items() if n.startswith("model.vision_tower.")}
    assert side_tower and json.loads((run_dir / TOWER_CHECK_NAME).read_text())["bitwise_equal"]
    merged_dir = merge_and_export(run_dir, setup["root"] / "merged")
    merged, processor = plain_load(merged_dir)
    assert type(merged) is LlavaForConditionalGeneration and not any("lora" in n for n in merged.state_dict())
    assert all(torch.equal(tower_of(merged)[n], t) for n, t in side_tower.items())  # the trained tower, not the base's
    start = tower_of(plain_load(stage_a)[0])
    assert any(not torch.equal(start[n], t) for n, t in side_tower.items())
    assert json.loads((merged_dir / TOWER_CHECK_NAME).read_text())["bitwise_equal"]
    answers(merged, processor, setup["instruct"]["image_folder"])

    # a stale side file (tower reset to the base's) is merged as written, and verify says it did not move
    stale = setup["root"] / "lora_stale"
    stale.mkdir()
    for path in run_dir.iterdir():
        if path.is_file():
            (stale / path.name).write_bytes(path.read_bytes())
    save_file({**side, **{f"model.vision_tower.{n}": t.contiguous() for n, t in start.items()}}, str(stale / NON_LORA_TRAINABLES))
    restored = merge_and_export(stale, setup["root"] / "merged_stale")
    assert main(["verify", str(restored), "--encoder", setup["encoder"], "--require-equal"]) == 0


@pytest.mark.slow
def test_swap_keeps_the_llava15_format(setup, stage_a, tmp_path):
    other = save_tiny_clip(tmp_path / "other", seed=1)
    swapped = swap_vision_tower(stage_a, other, tmp_path / "swapped")
    model, processor = plain_load(swapped)
    reference = CLIPModel.from_pretrained(other).vision_model.state_dict()
    assert all(torch.equal(tower_of(model)[n], t) for n, t in reference.items())
    before, _ = plain_load(stage_a)
    assert {n: t.shape for n, t in model.state_dict().items()} == {n: t.shape for n, t in before.state_dict().items()}
    assert torch.equal(model.model.multi_modal_projector.linear_1.weight, before.model.multi_modal_projector.linear_1.weight)
    answers(model, processor, setup["instruct"]["image_folder"])


# ---- LLaVA-NeXT's preprocess_qwen labels ------------------------------------------------------------


def test_published_qwen_masking_supervises_header_and_separators(setup):
    _, processor = build_llava(setup["lm"], setup["encoder"], arch="llava")
    tokenizer = processor.tokenizer
    rows = [{"id": "t", "conversations": [
        {"from": "human", "value": "How many birds?\nCount them."}, {"from": "gpt", "value": "Three."},
        {"from": "human", "value": "And cats?"}, {"from": "gpt", "value": "Two\ncats."}]}]
    path = setup["root"] / "masking.json"
    path.write_text(json.dumps(rows))
    ours = LlavaConversationDataset(path, None, processor, "qwen_1_5", 256, image_aspect_ratio="pad")[0]
    published = LlavaConversationDataset(path, None, processor, "qwen_1_5", 256, image_aspect_ratio="pad",
                                         label_masking="llava_next")[0]
    assert torch.equal(ours["input_ids"], published["input_ids"])

    # LLaVA-NeXT preprocess_qwen, written out: each turn "<|im_start|>{role}\n{content}<|im_end|>\n" encoded on
    # its own; system and user turns masked, assistant turns supervised whole; then every "\n",
    # <|im_start|>, <|im_end|> token is supervised wherever it is.
    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    input_ids, labels = [], []
    turns = [("system", "You are a helpful assistant."), ("user", "How many birds?\nCount them."),
             ("assistant", "Three."), ("user", "And cats?"), ("assistant", "Two\ncats.")]
    for role, content in turns:
        ids = encode(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        input_ids += ids
        labels += ids if role == "assistant" else [IGNORE_INDEX] * len(ids)
    unmasked = {encode("\n")[0], *tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])}
    labels = [token if token in unmasked else label for token, label in zip(input_ids, labels)]
    assert published["input_ids"].tolist() == input_ids
    assert published["labels"].tolist() == labels
    supervised_ours = int((ours["labels"] != IGNORE_INDEX).sum())
    assert int((published["labels"] != IGNORE_INDEX).sum()) > supervised_ours
    assert all(o == IGNORE_INDEX or o == p for o, p in zip(ours["labels"].tolist(), published["labels"].tolist()))
