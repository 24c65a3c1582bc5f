"""Fold a LoRA run into a plain LLaVA checkpoint (peft merge_and_unload) and export it.

The export loads with `LlavaNextForConditionalGeneration` / `LlavaForConditionalGeneration.from_pretrained`
(the run's own architecture) + its processor, and needs neither peft nor this package. The base is, in
order: `base` if given, else the run's `model_name_or_path`, else the LM + encoder it was built from
(rebuilt deterministically; the projector, image_newline and an unfrozen tower come from
`non_lora_trainables.safetensors` anyway). That file must hold every part the run trained outside LoRA
(its recipe's mm_tunable_parts): without it the merge would carry the base's untrained projector and pass
every check, so it is refused, naming the file. The merged config records where each part came from
(`reasonclip_merge`). The exported tower is read back and must equal, bitwise, the tower that went into
the merge, with no NaN/inf (tower_check.py). Every file of the run is checked before anything is loaded
(a cut-off or pickled adapter is one line; pickle weights are never unpickled).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from safetensors import safe_open

from ..io_utils import UnreadableFileError, check_state_file, refuse_existing, require_finite
from ..vlm.architectures import architecture_of
from ..vlm.build import build_llava
from ..vlm.hub_layout import save_vlm
from ..vlm.tower_check import require_saved_tower, saved_tower_state, vision_tower_state, write_tower_check
from .train import NON_LORA_TRAINABLES, TRAIN_CONFIG_NAME, LlavaTrainConfig, load_non_lora_trainables, load_train_config, part_of

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PROVENANCE_KEY = "reasonclip_merge"


def run_config(checkpoint_dir: Path) -> LlavaTrainConfig | None:
    recipe = checkpoint_dir / TRAIN_CONFIG_NAME
    return load_train_config(recipe) if recipe.is_file() else None


def base_source(checkpoint_dir: Path, base: str | Path | None) -> str:
    """What the base is, in words (the merged config records it)."""
    if base is not None:
        return str(base)
    config = run_config(checkpoint_dir)
    if config is None:
        raise FileNotFoundError(f"{checkpoint_dir}: no {TRAIN_CONFIG_NAME} to find the base model; pass base=")
    return config.model_name_or_path or f"built from {config.language_model} + {config.vision_tower}"


def load_base(checkpoint_dir: Path, base: str | Path | None) -> PreTrainedModel:
    if base is not None:
        return architecture_of(base).load(base, dtype=torch.float32, what="--base")[0]
    config = run_config(checkpoint_dir)
    if config is None:
        raise FileNotFoundError(f"{checkpoint_dir}: no {TRAIN_CONFIG_NAME} to find the base model; pass base=")
    if config.model_name_or_path:
        return config.architecture().load(config.model_name_or_path, dtype=torch.float32, what="base model")[0]
    aspect, merge = config.image_flags()
    model, _ = build_llava(
        config.language_model, config.vision_tower, arch=config.architecture().name,
        image_aspect_ratio=aspect, mm_patch_merge_type=merge,
        image_grid_pinpoints=config.image_grid_pinpoints, vision_feature_layer=config.mm_vision_select_layer,
    )
    return model


def check_lora_run(checkpoint_dir: Path) -> dict[str, list[str]]:
    """The run's parts trained outside LoRA -> their tensors in NON_LORA_TRAINABLES; refuse a run that lacks any.

    A part the recipe trained (mm_mlp_adapter, mm_vision_tower) but the file does not hold (or a missing
    file) would silently come from the base, untrained.
    """
    if not (checkpoint_dir / ADAPTER_WEIGHTS).is_file():
        found = sorted(p.name for p in checkpoint_dir.glob("adapter_model.*"))
        raise UnreadableFileError(f"{checkpoint_dir / (found[0] if found else ADAPTER_WEIGHTS)}: "
                                  f"{'pickle adapter weights are never unpickled; save the adapter as safetensors' if found else 'missing'}")
    side = checkpoint_dir / NON_LORA_TRAINABLES
    config = run_config(checkpoint_dir)
    if config is None and not side.is_file():
        raise FileNotFoundError(f"{side}: missing, and no {TRAIN_CONFIG_NAME} says the run trained nothing outside LoRA; "
                                "without it the projector would be the base's, untrained")
    held: dict[str, list[str]] = {}
    if side.is_file():
        with safe_open(str(side), framework="pt") as handle:
            for name in handle.keys():
                held.setdefault(part_of(name), []).append(name)
    trained = [part for part in config.tunable_parts if part != "mm_language_model"] if config else []
    missing = [part for part in trained if part not in held]
    if missing:
        raise FileNotFoundError(f"{side}: {'missing' if not side.is_file() else 'holds no ' + ', '.join(missing) + ' tensors'}; "
                                f"the run trained {', '.join(missing)} outside LoRA, so the merge would carry the base's untrained weights")
    return held


def merge_and_export(checkpoint_dir: str | Path, out_dir: str | Path, base: str | Path | None = None, overwrite: bool = False) -> Path:
    """LoRA run dir (or a Trainer checkpoint-N inside it) -> merged LLaVA checkpoint in out_dir.

    A full (non-LoRA) checkpoint is re-exported as is (weights + processor), which also drops Trainer state.
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint_dir}")
    refuse_existing(out_dir, overwrite, sources=(checkpoint_dir, base))
    for path in sorted(checkpoint_dir.iterdir()):  # what the merge reads: a cut-off or pickled file is one line
        if path.suffix in (".safetensors", ".json"):
            check_state_file(path)
    if not (checkpoint_dir / ADAPTER_CONFIG).is_file():
        if not (checkpoint_dir / "config.json").is_file():
            raise FileNotFoundError(f"{checkpoint_dir}: neither a LoRA adapter ({ADAPTER_CONFIG}) nor a model (config.json)")
        merged, processor = architecture_of(checkpoint_dir).load(checkpoint_dir, what="checkpoint")
    else:
        from peft import PeftModel

        held = check_lora_run(checkpoint_dir)
        model = load_base(checkpoint_dir, base)
        processor = architecture_of(model).processor_class.from_pretrained(checkpoint_dir)
        side = checkpoint_dir / NON_LORA_TRAINABLES
        if side.is_file():
            from safetensors.torch import load_file

            require_finite(load_file(str(side)).items(), str(side))
            load_non_lora_trainables(model, side)
        merged = PeftModel.from_pretrained(model, checkpoint_dir).merge_and_unload()
        require_finite(merged.state_dict().items(), f"merged model of {checkpoint_dir}")
        origin = base_source(checkpoint_dir, base)
        setattr(merged.config, PROVENANCE_KEY, {
            "lora_adapter": str(checkpoint_dir / ADAPTER_WEIGHTS),
            "base": origin,
            "parts": {part: (str(side) if part in held else f"base ({origin})") for part in ("mm_mlp_adapter", "mm_vision_tower")}
            | {"mm_language_model": f"base ({origin}) + LoRA ({checkpoint_dir / ADAPTER_WEIGHTS}), merged"},
        })
    tower = vision_tower_state(merged)  # LoRA never touches the tower: this is the trained (or base) one
    merged.config.use_cache = True
    save_vlm(merged, processor, out_dir, overwrite, sources=(checkpoint_dir, base))  # Hub layout (hub_layout.py)
    # Checked on what now sits at out_dir (after the rename), i.e. what a later load will read.
    saved = saved_tower_state(out_dir, dtype=next(iter(tower.values())).dtype)
    write_tower_check({"saved": True, **require_saved_tower(tower, saved, out_dir)}, out_dir)
    return out_dir
