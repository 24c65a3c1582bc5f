"""Tiny random VLMs of every family in `vlm.families`, built from each class's own config.

Vision: the tiny encoders' shape (`testing.tiny.TINY_VISION`: hidden 32, 32 px, patch 8) with the tower's
own vision model_type (Idefics towers are SigLIP with their own names); text: one layer, hidden 32, a
256-token vocabulary whose ids 200-203 are the image / video / begin- / end-of-image tokens. No tokenizer
or processor: tests feed ids and pixels directly (`generate_inputs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedModel

from ..vlm.families import FAMILIES, get_family
from .tiny import TINY_VISION

TINY_VLM_VOCAB = 256
IMAGE_TOKEN, VIDEO_TOKEN, BOI_TOKEN, EOI_TOKEN = 200, 201, 202, 203
TINY_VLM_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=16, vocab_size=TINY_VLM_VOCAB, max_position_embeddings=512,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
TINY_VLM_PINPOINTS = [[32, 32], [32, 64], [64, 32]]

# Per model_type: the config fields beyond vision_config / text_config (token ids, feature rule, pooling).
_EXTRA: dict[str, dict[str, Any]] = {
    "llava": dict(image_token_index=IMAGE_TOKEN, vision_feature_layer=-2, vision_feature_select_strategy="default",
                  image_seq_length=16),
    "llava_next": dict(image_token_index=IMAGE_TOKEN, image_grid_pinpoints=TINY_VLM_PINPOINTS, image_seq_length=16,
                       vision_feature_layer=-2, vision_feature_select_strategy="default"),
    "llava_next_video": dict(image_token_index=IMAGE_TOKEN, video_token_index=VIDEO_TOKEN,
                             image_grid_pinpoints=TINY_VLM_PINPOINTS, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", image_seq_length=16, spatial_pool_stride=2),
    "llava_onevision": dict(image_token_index=IMAGE_TOKEN, video_token_index=VIDEO_TOKEN,
                            image_grid_pinpoints=TINY_VLM_PINPOINTS, vision_feature_layer=-1,
                            vision_feature_select_strategy="full"),
    "vipllava": dict(image_token_index=IMAGE_TOKEN, vision_feature_layers=[-2, -1, 1], image_seq_length=16),
    "video_llava": dict(image_token_index=IMAGE_TOKEN, video_token_index=VIDEO_TOKEN, vision_feature_layer=-2,
                        vision_feature_select_strategy="default", image_seq_length=16, video_seq_length=8 * 17),
    "paligemma": dict(image_token_index=IMAGE_TOKEN, projection_dim=32, hidden_size=32),
    "gemma3": dict(image_token_index=IMAGE_TOKEN, boi_token_index=BOI_TOKEN, eoi_token_index=EOI_TOKEN,
                   mm_tokens_per_image=4),
    "aya_vision": dict(image_token_index=IMAGE_TOKEN, vision_feature_layer=-1, vision_feature_select_strategy="full",
                       downsample_factor=2),
    "cohere2_vision": dict(image_token_id=IMAGE_TOKEN, downsample_factor=2, alignment_intermediate_size=64),
    "deepseek_vl": dict(image_token_id=IMAGE_TOKEN),
    "idefics2": dict(image_token_id=IMAGE_TOKEN,
                     perceiver_config=dict(hidden_size=32, resampler_n_latents=4, resampler_depth=1,
                                           resampler_n_heads=2, resampler_head_dim=8, num_key_value_heads=1)),
    "idefics3": dict(image_token_id=IMAGE_TOKEN, scale_factor=2),
    "smolvlm": dict(image_token_id=IMAGE_TOKEN, scale_factor=2),
}


def tiny_vlm_config(model_type: str, vision_model_type: str | None = None, **vision_overrides: Any):
    """The config of a tiny `model_type` VLM whose tower has the tiny encoders' shape (+ overrides)."""
    family = get_family(model_type)
    config_class = type(AutoConfig.for_model(model_type))
    vision_type = vision_model_type or family.tower_types[0]
    vision = AutoConfig.for_model(vision_type, **{**TINY_VISION, **vision_overrides})
    text_type = config_class.sub_configs["text_config"]
    text_fields = dict(TINY_VLM_TEXT)
    if model_type == "gemma3":  # Gemma 3's sliding-window attention needs the window inside the sequence
        text_fields.update(sliding_window=64)
    # A dict: the VLM config picks its own default text model_type (Llama for LLaVA, Gemma for PaliGemma...).
    text = text_fields if text_type is AutoConfig else text_type(**text_fields)
    return config_class(vision_config=vision, text_config=text, **_EXTRA[model_type])


def build_tiny_vlm(model_type: str, seed: int = 0, vision_model_type: str | None = None,
                   **vision_overrides: Any) -> PreTrainedModel:
    """A random tiny VLM of `model_type` (any registered family), in fp32, eval mode."""
    config = tiny_vlm_config(model_type, vision_model_type, **vision_overrides)
    torch.manual_seed(seed)
    model = get_family(model_type).model_class(config)
    model.generation_config.eos_token_id = TINY_VLM_TEXT["eos_token_id"]
    model.generation_config.pad_token_id = TINY_VLM_TEXT["pad_token_id"]
    return model.eval()


def save_tiny_vlm(out_dir: str | Path, model_type: str, seed: int = 0, **vision_overrides: Any) -> Path:
    out_dir = Path(out_dir)
    build_tiny_vlm(model_type, seed=seed, **vision_overrides).save_pretrained(out_dir)
    return out_dir


def generate_inputs(model: PreTrainedModel, seed: int = 0) -> dict[str, Any]:
    """generate() inputs for one probe image: as many image tokens as the model's own features, then text.

    The count is read from the model's own `get_image_features` (no processor here)."""
    family = get_family(model.config.model_type)
    probe = family.probe_inputs(model.config, seed=seed)
    with torch.no_grad():
        features = model.model.get_image_features(**probe.image_kwargs).pooler_output
    parts = features if isinstance(features, (list, tuple)) else [features]
    count = sum(part.numel() for part in parts) // model.config.get_text_config().hidden_size
    ids = [TINY_VLM_TEXT["bos_token_id"]]
    if model.config.model_type == "gemma3":
        ids.append(BOI_TOKEN)
    ids += [IMAGE_TOKEN] * count + [10, 11, 12]
    input_ids = torch.tensor([ids])
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **probe.generate_kwargs}


__all__ = ["FAMILIES", "build_tiny_vlm", "generate_inputs", "save_tiny_vlm", "tiny_vlm_config"]
