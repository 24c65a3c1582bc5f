"""Tiny random models for the offline demo and the tests (config -> save_pretrained -> from_pretrained).

They keep the real structure of each family (CLIP with a CLS token, SigLIP without) at a size that
runs in milliseconds on a CPU. The CLIP text side uses the real 49408-token BPE vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import math

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)

from ..assets import clip_tokenizer

TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77)


def tiny_clip_config(projection_dim: int = 24, **vision_overrides) -> CLIPConfig:
    text = dict(TINY_TEXT, vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(TINY_VISION, **vision_overrides)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def tiny_siglip_config(**vision_overrides) -> SiglipConfig:
    # SigLIP's text tower pools the last token; a small vocabulary is enough for tests.
    text = dict(TINY_TEXT, vocab_size=1000, max_position_embeddings=16, pad_token_id=1, eos_token_id=1, bos_token_id=2)
    vision = dict(TINY_VISION, **vision_overrides)
    return SiglipConfig(text_config=text, vision_config=vision)


def save_tiny_clip(out_dir: str | Path, seed: int = 0, **vision_overrides) -> Path:
    """A random tiny CLIPModel with the real CLIP tokenizer and a CLIP image processor, saved to out_dir."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    config = tiny_clip_config(**vision_overrides)
    CLIPModel(config).save_pretrained(out_dir)
    size = config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(out_dir)
    clip_tokenizer().save_pretrained(out_dir)
    return out_dir


def save_learnable_tiny_clip(out_dir: str | Path, seed: int = 0, text_layers: int = 2, logit_scale: float | None = None) -> Path:
    """The tiny CLIP with initializer_factor 4 (learning studies, the demo); optionally more text layers
    and another initial logit scale.

    With the default factor the random 32-wide towers start with nearly identical embeddings for every
    input and sit at the collapsed solution (loss = ln batch) for hundreds of steps.
    """
    save_tiny_clip(out_dir)
    torch.manual_seed(seed)
    config = tiny_clip_config()
    config.text_config.num_hidden_layers = text_layers
    if logit_scale is not None:
        config.logit_scale_init_value = math.log(logit_scale)
    for part in (config, config.vision_config, config.text_config):
        part.initializer_factor = 4.0
    CLIPModel(config).save_pretrained(out_dir)
    return Path(out_dir)


def save_tiny_siglip(out_dir: str | Path, seed: int = 0, **vision_overrides) -> Path:
    """A random tiny SiglipModel with a SigLIP image processor (no tokenizer: tests feed ids directly)."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    config = tiny_siglip_config(**vision_overrides)
    SiglipModel(config).save_pretrained(out_dir)
    size = config.vision_config.image_size
    SiglipImageProcessor(size={"height": size, "width": size}).save_pretrained(out_dir)
    return out_dir
