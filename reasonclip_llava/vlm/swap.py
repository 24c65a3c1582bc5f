"""Swap the vision tower of an existing LLaVA checkpoint (LLaVA-NeXT or LLaVA-1.5) for an encoder of the same architecture.

Typical use: a released LLaVA built on CLIP ViT-L/14-336 gets the ReasonCLIP ViT-L/14-336 weights.
Only tensors change: the parameter count, every shape and the config's architecture fields stay those of
the original, so the result loads with the same plain transformers class
(`LlavaNextForConditionalGeneration` / `LlavaForConditionalGeneration`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers.image_processing_base import ImageProcessingMixin

from ..encoder.tower import load_vision_config, load_vision_model
from ..io_utils import refuse_existing
from .architectures import require_llava
from .build import reset_projector
from .hub_layout import save_vlm

# Fields that decide the tower's tensors and its computation; anything else (dropout, names) may differ.
ARCHITECTURE_FIELDS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps", "vision_use_head",
)


def architecture_mismatch(expected, found) -> str | None:
    """First differing architecture field as 'name a vs b', or None when the vision configs agree."""
    for field in ARCHITECTURE_FIELDS:
        a, b = getattr(expected, field, None), getattr(found, field, None)
        if a != b:
            return f"{field} {a} vs {b}"
    return None


def parameter_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def swap_vision_tower(
    llava_dir: str | Path,
    encoder_dir: str | Path,
    out_dir: str | Path,
    reinit_projector: bool = False,
    seed: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write llava_dir with its vision tower weights replaced by encoder_dir's; return out_dir.

    Raises ValueError naming the first differing architecture field (e.g. 'hidden_size 32 vs 48').
    `reinit_projector` starts the projector and image_newline afresh (from `seed`, else torch's RNG);
    re-run projector pretraining afterwards. A non-empty out_dir is refused unless `overwrite`; the
    result is written to a temp dir and renamed into place.
    The encoder's image mean/std replace the processor's: the tower was trained with them.
    """
    llava_dir, encoder_dir, out_dir = Path(llava_dir), Path(encoder_dir), Path(out_dir)
    if out_dir.resolve() == llava_dir.resolve():
        raise ValueError(f"out_dir {out_dir} is the source checkpoint; write the swapped model elsewhere")
    refuse_existing(out_dir, overwrite, sources=(encoder_dir,))
    architecture = require_llava(llava_dir, "--llava")
    llava_config = architecture.config_class.from_pretrained(llava_dir)
    encoder_config = load_vision_config(encoder_dir)
    mismatch = architecture_mismatch(llava_config.vision_config, encoder_config)
    if mismatch:
        raise ValueError(
            f"encoder {encoder_dir} does not match the vision tower of {llava_dir}: {mismatch} "
            "(swap needs the same architecture; use build_llava for a different one)"
        )

    model, processor = architecture.load(llava_dir, what="--llava")
    shapes_before = parameter_shapes(model)
    dtype = model.model.vision_tower.dtype
    tower = load_vision_model(encoder_dir, dtype=dtype)
    model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    if reinit_projector:
        reset_projector(model, seed=seed)
    if parameter_shapes(model) != shapes_before:  # load_state_dict(strict) already guarantees it; keep the promise explicit
        raise RuntimeError(f"swapping {encoder_dir} into {llava_dir} changed parameter shapes")

    model.config.reasonclip_encoder = str(encoder_dir)
    model.config.reasonclip_swapped_from = str(llava_dir)
    model.config.reasonclip_projector_reinitialised = bool(reinit_projector)
    encoder_processor = _encoder_normalisation(encoder_dir)
    if encoder_processor:
        processor.image_processor.image_mean = encoder_processor["image_mean"]
        processor.image_processor.image_std = encoder_processor["image_std"]
    return save_vlm(model, processor, out_dir, overwrite=overwrite)  # Hub layout (hub_layout.py)


def _encoder_normalisation(encoder_dir: Path) -> dict | None:
    """image_mean / image_std from the encoder's preprocessor config, if it has one."""
    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(str(encoder_dir))
    except OSError:
        return None
    if "image_mean" in settings and "image_std" in settings:
        return {"image_mean": settings["image_mean"], "image_std": settings["image_std"]}
    return None
