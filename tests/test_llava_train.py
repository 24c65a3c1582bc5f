"""LLaVA-NeXT training: config, parameter groups, stage A / stage B (full, LoRA), resume, merge and export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPModel, LlavaNextForConditionalGeneration, LlavaNextProcessor

from reasonclip_llava.vlm.build import build_llava_next
from reasonclip_llava.mllm_train.data import LengthGroupedSampler
from reasonclip_llava.mllm_train.merge import merge_and_export
from reasonclip_llava.mllm_train.train import (
    NON_LORA_TRAINABLES,
    LlavaTrainConfig,
    build_trainer,
    load_train_config,
    train_llava,
)

from llava_train_helpers import tiny_llava_stages  # tests/ helper module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_clip_dir):
    return tiny_llava_stages(tmp_path_factory.mktemp("llava_train"), tiny_clip_dir, n_instruct_images=6)


COMMON = dict(per_device_train_batch_size=2, logging_steps=1, report_to="none", warmup_ratio=0.0)


@pytest.fixture(scope="module")
def stage_a(setup):
    config = LlavaTrainConfig(
        language_model=setup["lm"], vision_tower=setup["encoder"], template="plain",
        mm_tunable_parts="mm_mlp_adapter", learning_rate=1e-3, max_steps=2, save_steps=100,
        output_dir=str(setup["root"] / "stage_a"), **setup["pretrain"], **COMMON,
    )
    return train_llava(config)


def instruct_config(setup, stage_a, **overrides) -> LlavaTrainConfig:
    values = dict(model_name_or_path=str(stage_a), template="qwen_1_5", max_steps=3, save_steps=100,
                  output_dir=str(setup["root"] / "unused"), **setup["instruct"], **COMMON)
    values.update(overrides)
    return LlavaTrainConfig(**values)


@pytest.fixture(scope="module")
def stage_b_full(setup, stage_a):
    config = instruct_config(
        setup, stage_a, mm_tunable_parts="mm_mlp_adapter,mm_language_model,mm_vision_tower",
        learning_rate=1e-3, mm_projector_lr=1e-3, mm_vision_tower_lr=1e-3,
        save_steps=1, save_total_limit=None, output_dir=str(setup["root"] / "stage_b_full"),
    )
    return train_llava(config), config


def losses(run_dir: Path) -> list[float]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def plain_load(run_dir: Path):
    return LlavaNextForConditionalGeneration.from_pretrained(run_dir), LlavaNextProcessor.from_pretrained(run_dir)


def generate_once(model, processor, image_folder: str) -> torch.Tensor:
    prompt = "<|im_start|>user\n<image>\nWhat colour is the square?<|im_end|>\n<|im_start|>assistant\n"
    inputs = processor(images=Image.open(Path(image_folder) / "0.png"), text=prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3
    return output


# ---- config ---------------------------------------------------------------------------------------


def test_yaml_and_overrides(tmp_path):
    recipe = tmp_path / "run.yaml"
    recipe.write_text("model_name_or_path: some/llava\nlearning_rate: 1e-3\nbf16: false\nmax_steps: 10\n")
    config = load_train_config(recipe, ["--learning_rate=2e-5", "--bf16", "--max_steps", "7",
                                        "--local_rank=3", "--mm_projector_lr=null", "--report_to=none"])
    assert config.learning_rate == pytest.approx(2e-5) and isinstance(config.learning_rate, float)
    assert config.bf16 is True and config.max_steps == 7 and config.mm_projector_lr is None
    assert config.report_to == "none" and config.model_name_or_path == "some/llava"
    assert load_train_config(recipe).learning_rate == pytest.approx(1e-3)  # PyYAML reads '1e-3' as a string

    with pytest.raises(ValueError, match="unknown config key 'lr'"):
        load_train_config(recipe, ["--lr=1e-4"])
    recipe.write_text("vision_towr: x\n")
    with pytest.raises(ValueError, match="unknown config key 'vision_towr'"):
        load_train_config(recipe)
    with pytest.raises(ValueError, match="max_steps"):
        load_train_config(None, ["--max_steps=many"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_train_config(tmp_path / "missing.yaml")


def test_validation_names_the_problem(setup, tmp_path):
    base = dict(language_model=setup["lm"], vision_tower=setup["encoder"], **setup["pretrain"])
    with pytest.raises(ValueError, match="unknown part 'mm_projector'"):
        LlavaTrainConfig(**base, mm_tunable_parts="mm_projector").validate()
    with pytest.raises(ValueError, match="add mm_language_model"):
        LlavaTrainConfig(**base, lora_enable=True).validate()
    with pytest.raises(ValueError, match="image_aspect_ratio 'pad'"):
        LlavaTrainConfig(**base, image_aspect_ratio="pad").validate()
    with pytest.raises(ValueError, match="not both"):
        LlavaTrainConfig(**base, model_name_or_path="x").validate()
    with pytest.raises(FileNotFoundError, match="data_path"):
        LlavaTrainConfig(**dict(base, data_path=str(tmp_path / "nope.json"))).validate()
    with pytest.raises(FileNotFoundError, match="deepspeed"):
        LlavaTrainConfig(**base, deepspeed=str(tmp_path / "zero9.json")).validate()


def test_recipes_carry_the_published_hyperparameters():
    pretrain = load_train_config(REPO / "train/llava_next_pretrain.yaml")
    assert (pretrain.template, pretrain.mm_tunable_parts, pretrain.learning_rate) == ("plain", "mm_mlp_adapter", 1e-3)
    assert pretrain.deepspeed == "train/zero2.json" and pretrain.mm_vision_select_layer == -2
    assert pretrain.per_device_train_batch_size * pretrain.gradient_accumulation_steps * 8 == 256
    finetune = load_train_config(REPO / "train/llava_next_finetune.yaml")
    assert finetune.template == "qwen_1_5" and finetune.deepspeed == "train/zero3.json"
    assert (finetune.learning_rate, finetune.mm_vision_tower_lr) == (1e-5, 2e-6)
    assert set(finetune.tunable_parts) == {"mm_vision_tower", "mm_mlp_adapter", "mm_language_model"}
    assert finetune.per_device_train_batch_size * finetune.gradient_accumulation_steps * 8 == 128
    lora = load_train_config(REPO / "train/llava_next_finetune_lora.yaml")
    assert lora.lora_enable and (lora.lora_r, lora.lora_alpha) == (128, 256)
    assert (lora.learning_rate, lora.mm_projector_lr) == (2e-4, 2e-5)
    assert "mm_vision_tower" not in lora.tunable_parts
    for name in ("zero2.json", "zero3.json", "zero3_offload.json"):
        stage = json.loads((REPO / "train" / name).read_text())["zero_optimization"]["stage"]
        assert stage == (2 if name == "zero2.json" else 3)


# ---- parameter groups ----------------------------------------------------------------------------------


def test_optimizer_groups_have_per_part_learning_rates(setup, stage_a):
    config = instruct_config(setup, stage_a, mm_tunable_parts="mm_mlp_adapter,mm_language_model,mm_vision_tower",
                             learning_rate=1e-5, mm_projector_lr=2e-5, mm_vision_tower_lr=2e-6,
                             group_by_modality_length=True, gradient_accumulation_steps=2)
    trainer = build_trainer(config)
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    expected = {"mm_language_model": 1e-5, "mm_mlp_adapter": 2e-5, "mm_vision_tower": 2e-6}
    seen = []
    for group in optimizer.param_groups:
        part = group["name"].removesuffix("_no_decay")
        assert group["lr"] == pytest.approx(expected[part])
        for parameter in group["params"]:
            name = names[id(parameter)]
            seen.append(name)
            if part == "mm_vision_tower":
                assert "vision_tower" in name
            elif part == "mm_mlp_adapter":
                assert "multi_modal_projector" in name or "image_newline" in name
            else:
                assert "language_model" in name or name == "lm_head.weight"
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable) == sorted(names.values())  # everything trains, once each
    assert {g["name"].removesuffix("_no_decay") for g in optimizer.param_groups} == set(expected)

    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert sampler.world_size == trainer.args.world_size * 2  # LLaVA: megabatch spans the accumulation


def test_lora_touches_only_the_language_model(setup, stage_a):
    config = instruct_config(setup, stage_a, mm_tunable_parts="mm_mlp_adapter,mm_language_model",
                             lora_enable=True, lora_r=4, lora_alpha=8, learning_rate=2e-4, mm_projector_lr=2e-5)
    trainer = build_trainer(config)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    lora = [n for n in trainable if "lora_" in n]
    assert lora and all(".language_model." in n for n in lora)
    assert not any("lora_" in n for n, _ in trainer.model.named_parameters() if "vision_tower" in n or "projector" in n)
    others = sorted(n for n in trainable if "lora_" not in n)
    assert others and all("multi_modal_projector" in n or "image_newline" in n for n in others)
    lrs = {g["name"].removesuffix("_no_decay"): g["lr"] for g in trainer.create_optimizer().param_groups}
    assert lrs == {"mm_language_model": pytest.approx(2e-4), "mm_mlp_adapter": pytest.approx(2e-5)}


# ---- stage A ---------------------------------------------------------------------------------------


def test_stage_a_trains_only_the_projector(setup, stage_a):
    assert all(np.isfinite(loss) for loss in losses(stage_a)) and len(losses(stage_a)) == 2
    trained, processor = plain_load(stage_a)
    fresh, _ = build_llava_next(setup["lm"], setup["encoder"])  # deterministic: the model stage A started from
    before, after = fresh.state_dict(), trained.state_dict()
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all("multi_modal_projector" in name or "image_newline" in name for name in changed)
    assert any("multi_modal_projector" in name for name in changed)
    encoder = CLIPModel.from_pretrained(setup["encoder"]).vision_model.state_dict()
    assert all(torch.equal(trained.model.vision_tower.state_dict()[k], v) for k, v in encoder.items())
    generate_once(trained, processor, setup["instruct"]["image_folder"])


# ---- stage B, full -------------------------------------------------------------------------------------


def test_stage_b_full_trains_tower_projector_and_lm(setup, stage_a, stage_b_full):
    run_dir, _ = stage_b_full
    assert all(np.isfinite(loss) for loss in losses(run_dir)) and len(losses(run_dir)) == 3
    before, _ = plain_load(stage_a)
    after, processor = plain_load(run_dir)
    for module in ("vision_tower", "multi_modal_projector", "language_model"):
        a = getattr(before.model, module).state_dict()
        b = getattr(after.model, module).state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a), f"{module} did not change"
    assert not torch.equal(before.model.vision_tower.embeddings.patch_embedding.weight,
                           after.model.vision_tower.embeddings.patch_embedding.weight)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == after.config.image_token_index
    generate_once(after, processor, setup["instruct"]["image_folder"])


def test_resume_replays_the_same_run(setup, stage_b_full):
    run_dir, config = stage_b_full
    resumed = train_llava(LlavaTrainConfig(**{
        **config.__dict__, "output_dir": str(setup["root"] / "resumed"),
        "resume_from_checkpoint": str(run_dir / "checkpoint-2"),
    }))
    state = json.loads((resumed / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert losses(resumed) == pytest.approx(losses(run_dir), rel=1e-6)  # steps 1-2 from the checkpoint, 3 re-run
    uninterrupted, again = load_file(run_dir / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert uninterrupted.keys() == again.keys()
    for name, tensor in uninterrupted.items():
        assert torch.allclose(tensor, again[name], atol=1e-6), name


# ---- stage B, LoRA + merge ---------------------------------------------------------------------------


def test_lora_run_merges_into_a_plain_checkpoint(setup, stage_a):
    run_dir = train_llava(instruct_config(
        setup, stage_a, mm_tunable_parts="mm_mlp_adapter,mm_language_model", lora_enable=True,
        lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-2, mm_projector_lr=1e-3, max_steps=2,
        save_steps=1, output_dir=str(setup["root"] / "lora"),
    ))
    assert all(np.isfinite(loss) for loss in losses(run_dir))
    adapter = load_file(run_dir / "adapter_model.safetensors")
    assert adapter and all(".language_model." in name and "lora_" in name for name in adapter)
    side = load_file(run_dir / NON_LORA_TRAINABLES)
    assert sorted(side) == ["model.image_newline", "model.multi_modal_projector.linear_1.bias",
                            "model.multi_modal_projector.linear_1.weight", "model.multi_modal_projector.linear_2.bias",
                            "model.multi_modal_projector.linear_2.weight"]

    merged_dir = merge_and_export(run_dir, setup["root"] / "merged")
    merged, processor = plain_load(merged_dir)
    base, _ = plain_load(stage_a)
    # W_merged = W_base + (alpha / r) * B @ A, computed here from the adapter file
    prefix = "base_model.model.model.language_model.layers.0.self_attn.q_proj"
    delta = (8 / 4) * adapter[f"{prefix}.lora_B.weight"] @ adapter[f"{prefix}.lora_A.weight"]
    assert delta.abs().max() > 0
    expected = base.model.language_model.layers[0].self_attn.q_proj.weight + delta
    assert torch.allclose(merged.model.language_model.layers[0].self_attn.q_proj.weight, expected, atol=1e-6)
    assert torch.equal(merged.model.multi_modal_projector.linear_1.weight, side["model.multi_modal_projector.linear_1.weight"])
    assert torch.equal(merged.model.image_newline, side["model.image_newline"])
    for name, tensor in base.model.vision_tower.state_dict().items():  # frozen tower, untouched
        assert torch.equal(merged.model.vision_tower.state_dict()[name], tensor)
    assert torch.equal(merged.lm_head.weight, base.lm_head.weight)
    assert not any("lora" in name for name in merged.state_dict())
    generate_once(merged, processor, setup["instruct"]["image_folder"])

    # a Trainer checkpoint-N merges the same way (its own copy of the config names the base)
    from_checkpoint = LlavaNextForConditionalGeneration.from_pretrained(
        merge_and_export(run_dir / "checkpoint-2", setup["root"] / "merged_ckpt"))
    for name, tensor in merged.state_dict().items():
        assert torch.equal(from_checkpoint.state_dict()[name], tensor), name


def test_merge_refuses_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        merge_and_export(tmp_path / "nothing", tmp_path / "out")


def test_training_shows_a_bar_and_one_summary_line_not_a_dict_per_step(setup, tmp_path, capfd):
    """At the demo's log level (errors only, where Trainer would swap its bar for printed dicts) a stage
    shows one tqdm bar and one summary line; the loss history still goes to trainer_state.json."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        out_dir = train_llava(LlavaTrainConfig(
            language_model=setup["lm"], vision_tower=setup["encoder"], template="plain", mm_tunable_parts="mm_mlp_adapter",
            learning_rate=1e-3, max_steps=2, save_steps=100, output_dir=str(tmp_path / "quiet"), **setup["pretrain"], **COMMON))
    finally:
        hf_logging.set_verbosity(verbosity)
    printed = capfd.readouterr()
    assert "{'loss'" not in printed.out + printed.err
    assert "2/2" in printed.err  # the bar
    assert sum(line.startswith(f"{out_dir}: 2 steps, 4 rows, mean loss") for line in printed.out.splitlines()) == 1
    assert sum(line.endswith("; 4 rows train") for line in printed.out.splitlines()) == 1  # the length pre-pass
    assert len(losses(out_dir)) == 2
