"""Fold a LoRA run into a plain LLaVA checkpoint (peft merge_and_unload) and export it.

The export loads with `LlavaNextForConditionalGeneration` / `LlavaForConditionalGeneration.from_pretrained`
(the run's own architecture) + its processor, and needs neither peft nor this package. The base is, in
order: `base` if given, else the run's `model_name_or_path`, else the LM + encoder it was built from
(rebuilt deterministically; the projector, image_newline and an unfrozen tower come from
`non_lora_trainables.safetensors` anyway). The exported tower is read back and must equal, bitwise, the
tower that went into the merge, with no NaN/inf (tower_check.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..io_utils import atomic_directory, refuse_existing
from ..vlm.architectures import architecture_of
from ..vlm.build import build_llava
from ..vlm.tower_check import require_saved_tower, saved_tower_state, vision_tower_state, write_tower_check
from .train import NON_LORA_TRAINABLES, TRAIN_CONFIG_NAME, load_non_lora_trainables, load_train_config

ADAPTER_CONFIG = "adapter_config.json"


def load_base(checkpoint_dir: Path, base: str | Path | None) -> PreTrainedModel:
    if base is not None:
        return architecture_of(base).load(base, dtype=torch.float32, what="--base")[0]
    recipe = checkpoint_dir / TRAIN_CONFIG_NAME
    if not recipe.is_file():
        raise FileNotFoundError(f"{checkpoint_dir}: no {TRAIN_CONFIG_NAME} to find the base model; pass base=")
    config = load_train_config(recipe)
    if config.model_name_or_path:
        return config.architecture().load(config.model_name_or_path, dtype=torch.float32, what="base model")[0]
    aspect, merge = config.image_flags()
    model, _ = build_llava(
        config.language_model, config.vision_tower, arch=config.architecture().name,
        image_aspect_ratio=aspect, mm_patch_merge_type=merge,
        image_grid_pinpoints=config.image_grid_pinpoints, vision_feature_layer=config.mm_vision_select_layer,
    )
    return model


def merge_and_export(checkpoint_dir: str | Path, out_dir: str | Path, base: str | Path | None = None, overwrite: bool = False) -> Path:
    """LoRA run dir (or a Trainer checkpoint-N inside it) -> merged LLaVA checkpoint in out_dir.

    A full (non-LoRA) checkpoint is re-exported as is (weights + processor), which also drops Trainer state.
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint_dir}")
    refuse_existing(out_dir, overwrite)
    if not (checkpoint_dir / ADAPTER_CONFIG).is_file():
        if not (checkpoint_dir / "config.json").is_file():
            raise FileNotFoundError(f"{checkpoint_dir}: neither a LoRA adapter ({ADAPTER_CONFIG}) nor a model (config.json)")
        merged, processor = architecture_of(checkpoint_dir).load(checkpoint_dir, what="checkpoint")
    else:
        from peft import PeftModel

        model = load_base(checkpoint_dir, base)
        processor = architecture_of(model).processor_class.from_pretrained(checkpoint_dir)
        side = checkpoint_dir / NON_LORA_TRAINABLES
        if side.is_file():
            load_non_lora_trainables(model, side)
        merged = PeftModel.from_pretrained(model, checkpoint_dir).merge_and_unload()
    tower = vision_tower_state(merged)  # LoRA never touches the tower: this is the trained (or base) one
    merged.config.use_cache = True
    with atomic_directory(out_dir, overwrite) as staging:
        merged.save_pretrained(staging)
        processor.save_pretrained(staging)
    # Checked on what now sits at out_dir (after the rename), i.e. what a later load will read.
    saved = saved_tower_state(out_dir, dtype=next(iter(tower.values())).dtype)
    write_tower_check({"saved": True, **require_saved_tower(tower, saved, out_dir)}, out_dir)
    return out_dir
