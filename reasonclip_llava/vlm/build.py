"""Build a transformers-native LLaVA from a causal LM and a CLIP/SigLIP encoder (e.g. a ReasonCLIP export).

Three architectures (architectures.py decides everything that differs): `llava_next` gives a plain
`LlavaNextForConditionalGeneration` + `LlavaNextProcessor` (anyres), `llava` a plain
`LlavaForConditionalGeneration` + `LlavaProcessor` (LLaVA-1.5: one tile, square or pad), `llava_onevision`
a plain `LlavaOnevisionForConditionalGeneration` + `LlavaOnevisionProcessor` (SigLIP, anyres_max_9). Each
saves and reloads with `from_pretrained` and needs nothing from this package at inference time.

Decisions (one place each):
  * tower: the encoder's vision transformer, loaded strictly by `encoder.tower.load_vision_model` (the
    same registry and loader the LLaVA tower and `reasonclip verify` use), copied in unchanged -- for
    llava_onevision cut after the select layer, head dropped, read at -1 (the same feature);
  * features: hidden state of layer -2; strategy 'default' (drop CLS) for CLIP, 'full' for SigLIP,
    which has no CLS token -- 'default' would silently drop a real image patch;
  * projector: mlp2x_gelu (linear_1 - GELU - linear_2), initialised like LLaVA's (nn.Linear defaults);
  * llava_next: LLaVA-NeXT's 336 px pinpoints scaled to the tower's image size, spatial_unpad + image_newline;
    llava_onevision: the (1x1),...,(6x6) grid of tower-sized tiles; llava: one tile of the tower's size,
    flat (576 tokens at 336 px / patch 14), processor square or pad. `image_grid_pinpoints` also takes
    LLaVA-NeXT's range string "(1x1),...,(6x6)";
  * new vocabulary rows ("<image>", "<video>" for OneVision) start at the mean of the existing rows, so a
    rebuild is deterministic.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AddedToken,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    PreTrainedModel,
    ProcessorMixin,
)

from ..encoder.tower import VISION_MODELS, load_vision_model
from ..config_utils import safe_yaml
from ..io_utils import load_pretrained_strict, refuse_existing, require_model_type
from ..value_checks import check_select_layer
from .architectures import IMAGE_TOKEN, LLAVA_NEXT_GRID, LlavaNextImageProcessor, architecture_of, get_architecture
from .hub_layout import save_vlm

# LLaVA-NeXT's anyres grid for 336 px towers, in units of the tower's image size.
ANYRES_GRID_UNITS = LLAVA_NEXT_GRID
_GRID_RANGE = re.compile(r"\((\d+)x(\d+)\)")


def default_grid_pinpoints(image_size: int, units: tuple[tuple[int, int], ...] = ANYRES_GRID_UNITS) -> list[list[int]]:
    """Pinpoints [h, w] of a grid in tower sizes; by default LLaVA-NeXT's ([[336,672],[672,336],[672,672],
    [1008,336],[336,1008]] at 336 px) for any size."""
    return [[rows * image_size, cols * image_size] for rows, cols in units]


def resolve_grid_pinpoints(value: list | str | None, image_size: int,
                           units: tuple[tuple[int, int], ...] = ANYRES_GRID_UNITS) -> list[list[int]]:
    """`image_grid_pinpoints` as LLaVA-NeXT's train.py reads it: None -> the default grid; a list of [h, w];
    a string holding such a list; or a range "(1x1),...,(6x6)" -> every (i, j) from the first pair to the
    last, times the tower's image size. One-line error otherwise."""
    if value is None:
        return default_grid_pinpoints(image_size, units)
    if isinstance(value, str):
        text = value.strip()
        pairs = _GRID_RANGE.findall(text)
        if pairs and "x" in text:
            (first_rows, first_cols), (last_rows, last_cols) = (tuple(map(int, pair)) for pair in (pairs[0], pairs[-1]))
            grid = tuple((i, j) for i in range(first_rows, last_rows + 1) for j in range(first_cols, last_cols + 1))
            if not grid:
                raise ValueError(f"image_grid_pinpoints {value!r}: the range from {pairs[0]} to {pairs[-1]} is empty")
            return default_grid_pinpoints(image_size, grid)
        value = safe_yaml(text, f"image_grid_pinpoints {value!r}")
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, int) and x > 0 for x in p) for p in value)):
        raise ValueError(f"image_grid_pinpoints {value!r}: expected [[height, width], ...] in pixels or a range like '(1x1),...,(6x6)'")
    return [[int(h), int(w)] for h, w in value]


def resolve_dtype(torch_dtype: torch.dtype | str | None) -> torch.dtype:
    """None -> float32 (trainers keep fp32 master weights); strings like 'bfloat16' -> torch dtypes."""
    if torch_dtype is None:
        return torch.float32
    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    dtype = getattr(torch, str(torch_dtype), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"torch_dtype {torch_dtype!r} is not a torch dtype (e.g. 'float32', 'bfloat16')")
    return dtype


def reset_projector(model: PreTrainedModel, seed: int | None = None) -> None:
    """Fresh mlp2x_gelu projector (nn.Linear's own init, as LLaVA) and image_newline (N(0, 1/hidden)) if any."""
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        for linear in (projector.linear_1, projector.linear_2):
            linear.reset_parameters()
        if architecture_of(model).has_image_newline:
            hidden_size = model.config.text_config.hidden_size
            model.model.image_newline.normal_(0.0, 1.0 / math.sqrt(hidden_size))
    if seed is not None:
        torch.random.set_rng_state(generator_state)


def image_processor_from_encoder(
    encoder: str | Path, grid_pinpoints: list[list[int]], image_size: int
) -> LlavaNextImageProcessor:
    """The encoder's own preprocessing (size, crop, mean/std, resample) as a LlavaNextImageProcessor with anyres."""
    return get_architecture("llava_next").image_processor(
        encoder, image_size, image_aspect_ratio="anyres", image_grid_pinpoints=grid_pinpoints)


# Prepended to the LM's own chat template so that the processor also accepts transformers' multimodal
# messages ({"type": "image"} / {"type": "text"} parts): each image part becomes "<image>\n", in order.
FLATTEN_MULTIMODAL_MESSAGES = (
    "{%- set mm = namespace(messages=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set mm.messages = mm.messages + [message] -%}"
    "{%- else -%}{%- set part_text = namespace(value='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set part_text.value = part_text.value + '" + IMAGE_TOKEN + "\\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set part_text.value = part_text.value + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set mm.messages = mm.messages + [{'role': message['role'], 'content': part_text.value}] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set messages = mm.messages -%}"
)


def multimodal_chat_template(text_template: str | None) -> str | None:
    """The LM's chat template, made to accept image/text content parts as well as plain strings."""
    if not text_template or FLATTEN_MULTIMODAL_MESSAGES in text_template:
        return text_template
    return FLATTEN_MULTIMODAL_MESSAGES + text_template


def add_image_token(tokenizer, tokens: tuple[str, ...] = (IMAGE_TOKEN,)) -> int:
    """Add "<image>" (and any other placeholder in `tokens`, in order) as special tokens, and a pad token if
    the LM has none; return the image token id."""
    for token in tokens:
        if token not in tokenizer.get_vocab():
            tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        # LLaVA pads Llama-family LMs with unk; LMs without unk pad with eos (labels mask the padding anyway).
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def resize_embeddings_to_mean(lm: PreTrainedModel, vocab_size: int) -> None:
    """Grow input/output embeddings to vocab_size; new rows = mean of the old rows (deterministic)."""
    old_size = lm.get_input_embeddings().weight.shape[0]
    if vocab_size <= old_size:
        return
    lm.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        for embedding in {id(m): m for m in (lm.get_input_embeddings(), lm.get_output_embeddings()) if m is not None}.values():
            embedding.weight[old_size:] = embedding.weight[:old_size].mean(dim=0, keepdim=True)


def build_llava(
    language_model: str | Path,
    encoder: str | Path,
    *,
    arch: str | None = None,
    image_aspect_ratio: str | None = None,
    mm_patch_merge_type: str | None = None,
    image_grid_pinpoints: list[list[int]] | str | None = None,
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str | None = None,
    projector_hidden_act: str = "gelu",
    torch_dtype: torch.dtype | str | None = None,
    seed: int = 0,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Assemble a LLaVA = encoder's vision tower + fresh mlp2x_gelu projector + the causal LM.

    `arch` 'llava_next' (default), 'llava' or 'llava_onevision'; `image_aspect_ratio` / `mm_patch_merge_type`
    are LLaVA's flags (None = the architecture's default: anyres + spatial_unpad, pad + flat, or
    anyres_max_9 + spatial_unpad), checked against it. `vision_feature_layer` is LLaVA's select layer (the
    hidden state the projector reads); `vision_feature_select_strategy` None picks 'default' (drop CLS) for
    CLIP and 'full' for SigLIP. The tower and LM tensors are the loaded ones (no copy, no random init of the
    big parts).
    """
    architecture = get_architecture(arch)
    aspect, _ = architecture.resolve_image_flags(image_aspect_ratio, mm_patch_merge_type)
    architecture.check_available()  # before the (slow) loads
    dtype = resolve_dtype(torch_dtype)
    tower = load_vision_model(encoder, dtype=dtype)
    architecture.check_encoder(tower.config, encoder)
    check_select_layer(vision_feature_layer, tower.config.num_hidden_layers, "vision_feature_layer (--select-layer, mm_vision_select_layer)")
    tower, vision_feature_layer = architecture.tower_for(tower, vision_feature_layer)
    vision_config = tower.config
    _, has_cls_token = VISION_MODELS[vision_config.model_type]
    strategy = vision_feature_select_strategy or ("default" if has_cls_token else "full")
    if strategy not in ("default", "full"):
        raise ValueError(f"vision_feature_select_strategy {strategy!r}: expected 'default' or 'full'")
    if strategy == "default" and not has_cls_token:
        raise ValueError(f"encoder {encoder}: {vision_config.model_type} has no CLS token; use strategy 'full'")
    grid_pinpoints = None
    if architecture.grid_units:  # anyres
        grid_pinpoints = resolve_grid_pinpoints(image_grid_pinpoints or None, vision_config.image_size, architecture.grid_units)
    elif image_grid_pinpoints:
        raise ValueError(f"image_grid_pinpoints: architecture {architecture.name!r} takes one tile, not an anyres grid")

    lm_config = require_model_type(language_model, causal_lm_types(), "language model", "a causal LM (Llama / Qwen / Mistral family)")
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    add_image_token(tokenizer, architecture.special_tokens)
    lm = load_pretrained_strict(AutoModelForCausalLM, language_model, f"language model ({lm_config.model_type})", dtype=dtype)
    resize_embeddings_to_mean(lm, len(tokenizer))

    config = architecture.build_config(
        vision_config, lm.config,
        **architecture.token_fields(tokenizer),
        projector_hidden_act=projector_hidden_act,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=vision_feature_layer,
        image_grid_pinpoints=grid_pinpoints,
        tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", False)),
    )
    config.reasonclip_encoder = str(encoder)
    config.reasonclip_language_model = str(language_model)
    # Skeleton on the meta device, then plug in the loaded tower and LM; only projector (+ newline) are new.
    with torch.device("meta"):
        model = architecture.model_class(config)
    decoder = getattr(lm, lm.base_model_prefix)
    if type(decoder) is not type(model.model.language_model):
        raise ValueError(
            f"language model {language_model}: {type(decoder).__name__} is not the AutoModel class "
            f"{type(model.model.language_model).__name__} {architecture.model_class.__name__} builds for {lm.config.model_type}"
        )
    model.model.vision_tower = tower
    model.model.language_model = decoder
    model.lm_head = lm.get_output_embeddings()
    model.model.multi_modal_projector.to_empty(device="cpu")
    if architecture.has_image_newline:
        model.model.image_newline = nn.Parameter(torch.empty(lm.config.hidden_size))
    reset_projector(model, seed=seed)
    model.to(dtype)
    model.generation_config = lm.generation_config
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if config.tie_word_embeddings:
        model.tie_weights()
    model.eval()

    image_processor = architecture.image_processor(
        encoder, vision_config.image_size, image_aspect_ratio=aspect, image_grid_pinpoints=grid_pinpoints)
    processor = architecture.build_processor(image_processor, tokenizer, vision_config, strategy,
                                             multimodal_chat_template(tokenizer.chat_template))
    return model, processor


def build_llava_next(
    language_model: str | Path, encoder: str | Path, **kwargs
) -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    """`build_llava(..., arch='llava_next')`: the anyres LLaVA-NeXT."""
    return build_llava(language_model, encoder, arch="llava_next", **kwargs)


def causal_lm_types() -> set[str]:
    """model_types AutoModelForCausalLM builds (a CLIP or a LLaVA dir is not a language model)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def save_llava(model: PreTrainedModel, processor: ProcessorMixin, out_dir: str | Path, overwrite: bool = False) -> Path:
    """save_pretrained both (safetensors, Hub layout: hub_layout.save_vlm) into a temp dir renamed to out_dir;
    a non-empty out_dir needs `overwrite`. Reload with the plain transformers classes."""
    return save_vlm(model, processor, out_dir, overwrite=overwrite)  # Hub layout: every reader loads the tower


save_llava_next = save_llava


def build_and_save(language_model: str | Path, encoder: str | Path, out_dir: str | Path, *,
                   overwrite: bool = False, **kwargs) -> Path:
    """CLI entry (`reasonclip llava-build`): build_llava(..., **kwargs) then save_llava(..., out_dir)."""
    refuse_existing(out_dir, overwrite, sources=(language_model, encoder))  # before the (slow) build
    model, processor = build_llava(language_model, encoder, **kwargs)
    return save_llava(model, processor, out_dir, overwrite=overwrite)
