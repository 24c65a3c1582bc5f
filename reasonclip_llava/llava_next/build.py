"""Build a transformers-native LLaVA-NeXT from a causal LM and a CLIP/SigLIP encoder (e.g. a ReasonCLIP export).

The result is a plain `LlavaNextForConditionalGeneration` + `LlavaNextProcessor`: it saves and reloads with
`from_pretrained` and needs nothing from this package at inference time.

Decisions (one place each):
  * tower: the encoder's vision transformer, loaded strictly by `encoder.tower.load_vision_model` (the
    same registry and loader the LLaVA tower and `reasonclip verify` use), copied in unchanged;
  * features: hidden state of layer -2; strategy 'default' (drop CLS) for CLIP, 'full' for SigLIP,
    which has no CLS token -- 'default' would silently drop a real image patch;
  * projector: mlp2x_gelu (linear_1 - GELU - linear_2), initialised like LLaVA's (nn.Linear defaults);
  * anyres: LLaVA-NeXT's 336 px pinpoints scaled to the tower's image size, spatial_unpad + image_newline;
  * new vocabulary rows ("<image>") start at the mean of the existing rows, so a rebuild is deterministic.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AddedToken,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    PreTrainedModel,
)
from transformers.image_processing_base import ImageProcessingMixin

from ..encoder.tower import VISION_MODELS, load_vision_model
from ..io_utils import atomic_directory, load_pretrained_strict, refuse_existing, require_model_type
from ..value_checks import check_select_layer
from transformers.utils import is_torchvision_available

# Same processor, two backends; both save as "LlavaNextImageProcessor". Picking the PIL one ourselves
# when torchvision is absent avoids transformers' fallback warning on every import.
if is_torchvision_available():
    from transformers import LlavaNextImageProcessor
else:
    from transformers import LlavaNextImageProcessorPil as LlavaNextImageProcessor

IMAGE_TOKEN = "<image>"

# LLaVA-NeXT's anyres grid for 336 px towers, in units of the tower's image size.
ANYRES_GRID_UNITS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))


def default_grid_pinpoints(image_size: int) -> list[list[int]]:
    """LLaVA-NeXT's pinpoints ([[336,672],[672,336],[672,672],[1008,336],[336,1008]] at 336 px) for any size."""
    return [[rows * image_size, cols * image_size] for rows, cols in ANYRES_GRID_UNITS]


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


def reset_projector(model: LlavaNextForConditionalGeneration, seed: int | None = None) -> None:
    """Fresh mlp2x_gelu projector (nn.Linear's own init, as LLaVA) and image_newline (N(0, 1/hidden))."""
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        for linear in (projector.linear_1, projector.linear_2):
            linear.reset_parameters()
        hidden_size = model.config.text_config.hidden_size
        model.model.image_newline.normal_(0.0, 1.0 / math.sqrt(hidden_size))
    if seed is not None:
        torch.random.set_rng_state(generator_state)


def image_processor_from_encoder(
    encoder: str | Path, grid_pinpoints: list[list[int]], image_size: int
) -> LlavaNextImageProcessor:
    """The encoder's own preprocessing (size, crop, mean/std, resample) as a LlavaNextImageProcessor with anyres."""
    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(str(encoder))
    except OSError as error:
        raise FileNotFoundError(f"encoder {encoder}: no preprocessor_config.json ({error})") from error
    keep = ("size", "crop_size", "do_center_crop", "do_resize", "do_rescale", "rescale_factor",
            "do_normalize", "image_mean", "image_std", "resample", "do_convert_rgb")
    kwargs = {key: settings[key] for key in keep if key in settings}
    kwargs.setdefault("size", {"shortest_edge": image_size})
    if "crop_size" not in kwargs:
        kwargs["do_center_crop"] = False  # SigLIP resizes straight to height x width
    # LlavaNext cuts anyres tiles of crop_size, even without center crop: it must be the tower's size.
    kwargs["crop_size"] = {"height": image_size, "width": image_size}
    return LlavaNextImageProcessor(image_grid_pinpoints=grid_pinpoints, do_pad=True, **kwargs)


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


def add_image_token(tokenizer) -> int:
    """Add "<image>" as a special token (and a pad token if the LM has none); return the image token id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
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


def build_llava_next(
    language_model: str | Path,
    encoder: str | Path,
    *,
    image_grid_pinpoints: list[list[int]] | None = None,
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str | None = None,
    projector_hidden_act: str = "gelu",
    torch_dtype: torch.dtype | str | None = None,
    seed: int = 0,
) -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    """Assemble LLaVA-NeXT = encoder's vision tower + fresh mlp2x_gelu projector + the causal LM.

    `vision_feature_select_strategy` None picks 'default' (drop CLS) for CLIP and 'full' for SigLIP.
    The tower and LM tensors are the loaded ones (no copy, no random init of the big parts).
    """
    dtype = resolve_dtype(torch_dtype)
    tower = load_vision_model(encoder, dtype=dtype)
    vision_config = tower.config
    check_select_layer(vision_feature_layer, vision_config.num_hidden_layers, "vision_feature_layer (--select-layer, mm_vision_select_layer)")
    _, has_cls_token = VISION_MODELS[vision_config.model_type]
    strategy = vision_feature_select_strategy or ("default" if has_cls_token else "full")
    if strategy not in ("default", "full"):
        raise ValueError(f"vision_feature_select_strategy {strategy!r}: expected 'default' or 'full'")
    if strategy == "default" and not has_cls_token:
        raise ValueError(f"encoder {encoder}: {vision_config.model_type} has no CLS token; use strategy 'full'")
    grid_pinpoints = image_grid_pinpoints or default_grid_pinpoints(vision_config.image_size)

    lm_config = require_model_type(language_model, causal_lm_types(), "language model", "a causal LM (Llama / Qwen / Mistral family)")
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    image_token_id = add_image_token(tokenizer)
    lm = load_pretrained_strict(AutoModelForCausalLM, language_model, f"language model ({lm_config.model_type})", dtype=dtype)
    resize_embeddings_to_mean(lm, len(tokenizer))

    config = LlavaNextConfig(
        vision_config=vision_config,
        text_config=lm.config,
        image_token_index=image_token_id,
        projector_hidden_act=projector_hidden_act,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=vision_feature_layer,
        image_grid_pinpoints=grid_pinpoints,
        tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", False)),
    )
    config.reasonclip_encoder = str(encoder)
    config.reasonclip_language_model = str(language_model)
    # Skeleton on the meta device, then plug in the loaded tower and LM; only projector + newline are new.
    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(config)
    decoder = getattr(lm, lm.base_model_prefix)
    if type(decoder) is not type(model.model.language_model):
        raise ValueError(
            f"language model {language_model}: {type(decoder).__name__} is not the AutoModel class "
            f"{type(model.model.language_model).__name__} LlavaNext builds for {lm.config.model_type}"
        )
    model.model.vision_tower = tower
    model.model.language_model = decoder
    model.lm_head = lm.get_output_embeddings()
    model.model.multi_modal_projector.to_empty(device="cpu")
    model.model.image_newline = nn.Parameter(torch.empty(lm.config.hidden_size))
    reset_projector(model, seed=seed)
    model.to(dtype)
    model.generation_config = lm.generation_config
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if config.tie_word_embeddings:
        model.tie_weights()
    model.eval()

    image_processor = image_processor_from_encoder(encoder, grid_pinpoints, vision_config.image_size)
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=strategy,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=int(has_cls_token),  # tokens before the patches
        chat_template=multimodal_chat_template(tokenizer.chat_template),
    )
    return model, processor


def causal_lm_types() -> set[str]:
    """model_types AutoModelForCausalLM builds (a CLIP or a LlavaNext dir is not a language model)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def save_llava_next(
    model: LlavaNextForConditionalGeneration, processor: LlavaNextProcessor, out_dir: str | Path, overwrite: bool = False
) -> Path:
    """save_pretrained both (safetensors) into a temp dir renamed to out_dir; a non-empty out_dir needs `overwrite`."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    return out_dir


def build_and_save(
    language_model: str | Path,
    encoder: str | Path,
    out_dir: str | Path,
    *,
    image_grid_pinpoints: list[list[int]] | None = None,
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str | None = None,
    torch_dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
) -> Path:
    """CLI entry (`reasonclip llava-build`): build_llava_next(...) then save_llava_next(..., out_dir)."""
    refuse_existing(out_dir, overwrite)  # before the (slow) build
    model, processor = build_llava_next(
        language_model, encoder,
        image_grid_pinpoints=image_grid_pinpoints,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        torch_dtype=torch_dtype,
    )
    return save_llava_next(model, processor, out_dir, overwrite=overwrite)
