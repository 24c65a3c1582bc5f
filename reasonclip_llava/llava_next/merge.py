"""Fold a LoRA run into a plain LLaVA-NeXT checkpoint (peft merge_and_unload) and export it.

The export loads with `LlavaNextForConditionalGeneration.from_pretrained` + `LlavaNextProcessor.from_pretrained`
and needs neither peft nor this package. The base is, in order: `base` if given, else the run's
`model_name_or_path`, else the LM + encoder it was built from (rebuilt deterministically; the projector,
image_newline and an unfrozen tower come from `non_lora_trainables.safetensors` anyway).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

from ..io_utils import atomic_directory, load_pretrained_strict, refuse_existing
from .build import build_llava_next
from .train import NON_LORA_TRAINABLES, TRAIN_CONFIG_NAME, load_non_lora_trainables, load_train_config

ADAPTER_CONFIG = "adapter_config.json"


def load_base(checkpoint_dir: Path, base: str | Path | None) -> LlavaNextForConditionalGeneration:
    if base is not None:
        return load_pretrained_strict(LlavaNextForConditionalGeneration, base, "--base", dtype=torch.float32)
    recipe = checkpoint_dir / TRAIN_CONFIG_NAME
    if not recipe.is_file():
        raise FileNotFoundError(f"{checkpoint_dir}: no {TRAIN_CONFIG_NAME} to find the base model; pass base=")
    config = load_train_config(recipe)
    if config.model_name_or_path:
        return load_pretrained_strict(LlavaNextForConditionalGeneration, config.model_name_or_path, "base model", dtype=torch.float32)
    model, _ = build_llava_next(
        config.language_model, config.vision_tower,
        image_grid_pinpoints=config.image_grid_pinpoints, vision_feature_layer=config.mm_vision_select_layer,
    )
    return model


def merge_and_export(checkpoint_dir: str | Path, out_dir: str | Path, base: str | Path | None = None, overwrite: bool = False) -> Path:
    """LoRA run dir (or a Trainer checkpoint-N inside it) -> merged LlavaNext checkpoint in out_dir.

    A full (non-LoRA) checkpoint is re-exported as is (weights + processor), which also drops Trainer state.
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint_dir}")
    refuse_existing(out_dir, overwrite)
    processor = LlavaNextProcessor.from_pretrained(checkpoint_dir)
    if not (checkpoint_dir / ADAPTER_CONFIG).is_file():
        if not (checkpoint_dir / "config.json").is_file():
            raise FileNotFoundError(f"{checkpoint_dir}: neither a LoRA adapter ({ADAPTER_CONFIG}) nor a model (config.json)")
        merged = load_pretrained_strict(LlavaNextForConditionalGeneration, checkpoint_dir, "checkpoint")
    else:
        from peft import PeftModel

        model = load_base(checkpoint_dir, base)
        side = checkpoint_dir / NON_LORA_TRAINABLES
        if side.is_file():
            load_non_lora_trainables(model, side)
        merged = PeftModel.from_pretrained(model, checkpoint_dir).merge_and_unload()
    merged.config.use_cache = True
    with atomic_directory(out_dir, overwrite) as staging:
        merged.save_pretrained(staging)
        processor.save_pretrained(staging)
    return out_dir

