"""A tiny random LlavaNext checkpoint (model + LlavaNextProcessor) for the evaluation tests and benches.

CLIP-style vision tower (32 px, patch 8, CLS token), anyres pinpoints [[32, 64], [64, 32], [64, 64]],
a Qwen2/Llama/Mistral text model and the offline BPE tokenizer of `testing.tiny_lm` with "<image>"
added. Weights are drawn with a wide init so that greedy answers depend visibly on the image and the
question: with the usual 0.02 every prompt decodes to nearly the same tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from ..vlm.build import add_image_token
from .tiny_lm import FAMILY_CONFIG, build_tiny_tokenizer

TINY_PINPOINTS = [[32, 64], [64, 32], [64, 64]]
TINY_LLAVA_VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2)
TINY_LLAVA_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=4096)

# ChatML whose user content is a list of {"type": "image"} / {"type": "text"} items, the form the
# llava-hf processors' templates take.
CHATML_CONTENT_LIST_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_llava_next(
    out_dir: str | Path,
    *,
    family: str = "qwen2",
    processor_chat_template: str | None = CHATML_CONTENT_LIST_TEMPLATE,
    text_overrides: dict | None = None,
    initializer_range: float = 0.5,
    seed: int = 0,
) -> Path:
    """Save a random tiny LlavaNextForConditionalGeneration and its processor to out_dir; return it.

    processor_chat_template=None saves a processor without a chat template (the tokenizer's applies).
    text_overrides change the text model's size (e.g. hidden_size, num_hidden_layers).
    """
    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(family)
    image_token_id = add_image_token(tokenizer)
    text_config = FAMILY_CONFIG[family](
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
        **{**TINY_LLAVA_TEXT, **(text_overrides or {})},
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**TINY_LLAVA_VISION, initializer_range=initializer_range),
        text_config=text_config,
        image_token_index=image_token_id,
        image_grid_pinpoints=TINY_PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(TINY_LLAVA_VISION["image_size"] // TINY_LLAVA_VISION["patch_size"]) ** 2,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)

    size = TINY_LLAVA_VISION["image_size"]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, image_grid_pinpoints=TINY_PINPOINTS
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=TINY_LLAVA_VISION["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=processor_chat_template,
    )
    processor.save_pretrained(out_dir)
    return out_dir
