"""The LLaVA architectures this package trains, decided in one place (as LLaVA's tower builder decides towers).

  llava_next       transformers `LlavaNextForConditionalGeneration`: anyres tiles + spatial_unpad +
                   image_newline (LLaVA-NeXT / LLaVA-1.6).
  llava            transformers `LlavaForConditionalGeneration`: one tile, flat patch features (LLaVA-1.5),
                   e.g. 576 image tokens for a 336 px / patch-14 CLIP tower with strategy 'default'. This is
                   the format of the MLLM ReasonCLIP published (`image_aspect_ratio` square for the
                   projector, pad + flat for instruction tuning).
  llava_onevision  transformers `LlavaOnevisionForConditionalGeneration`: a SigLIP tower, anyres_max_9 over
                   the (1x1),...,(6x6) grid + spatial_unpad + image_newline (LLaVA-OneVision, images).
                   The tower holds the encoder's layers up to the one LLaVA's select layer names and no
                   head, and the model reads its last hidden state (`vision_feature_layer -1`, 'full'), as
                   LLaVA-NeXT's SigLipVisionTower and the llava-hf OneVision conversions do: 26 of
                   so400m's 27 layers for `mm_vision_select_layer -2`, 729 tokens per 384 px tile.

Everything that differs between them lives here: config, model and processor classes, the tower the model
holds, the image processor (anyres grid, or LLaVA's pad-to-square via `do_pad`), the processor's token
count, and which of LLaVA's `image_aspect_ratio` / `mm_patch_merge_type` flags each can honour. Build,
swap, train, merge, eval and the bench ask this module; none of them branches on the architecture itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    LlavaProcessor,
    PretrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.image_processing_base import ImageProcessingMixin
from transformers.utils import is_torchvision_available

# Same processors, two backends; both save under the torchvision name. Picking the PIL one ourselves
# when torchvision is absent avoids transformers' fallback warning on every construction.
if is_torchvision_available():
    from transformers import LlavaImageProcessor, LlavaNextImageProcessor, LlavaOnevisionImageProcessor
else:
    from transformers import LlavaImageProcessorPil as LlavaImageProcessor
    from transformers import LlavaNextImageProcessorPil as LlavaNextImageProcessor
    from transformers import LlavaOnevisionImageProcessorPil as LlavaOnevisionImageProcessor

from ..io_utils import load_pretrained_strict, require_model_type

DEFAULT_ARCHITECTURE = "llava_next"
IMAGE_ASPECT_RATIOS = ("anyres", "anyres_max_9", "pad", "square")
PATCH_MERGE_TYPES = ("spatial_unpad", "flat")
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
# Anyres grids in units of the tower's image size, as (rows, cols) -> [rows * size, cols * size] = [h, w].
LLAVA_NEXT_GRID = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))  # LLaVA-NeXT's 336 px pinpoints
# LLaVA-OneVision's `--image_grid_pinpoints "(1x1),...,(6x6)"`, in the order LLaVA-NeXT's train.py expands it.
ONEVISION_GRID = tuple((rows, cols) for rows in range(1, 7) for cols in range(1, 7))
# anyres_max_N: LlavaOnevision downsamples an unpadded grid whose area is over (1.1 ** 2) * N tiles.
ANYRES_MAX_SLACK = 1.1
# Preprocessing settings of the encoder's own image processor carried into the LLaVA one.
ENCODER_IMAGE_SETTINGS = ("size", "crop_size", "do_center_crop", "do_resize", "do_rescale", "rescale_factor",
                          "do_normalize", "image_mean", "image_std", "resample", "do_convert_rgb")


def encoder_image_settings(encoder: str | Path, image_size: int) -> dict[str, Any]:
    """The encoder's preprocessing (size, crop, mean/std, resample), with the crop at the tower's size."""
    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(str(encoder))
    except OSError as error:
        raise FileNotFoundError(f"encoder {encoder}: no preprocessor_config.json ({error})") from error
    kwargs = {key: settings[key] for key in ENCODER_IMAGE_SETTINGS if key in settings}
    kwargs.setdefault("size", {"shortest_edge": image_size})
    if "crop_size" not in kwargs:
        kwargs["do_center_crop"] = False  # SigLIP resizes straight to height x width
    # The tile the tower sees must be its own size (LlavaNext also cuts anyres tiles of crop_size).
    kwargs["crop_size"] = {"height": image_size, "width": image_size}
    return kwargs


@dataclass(frozen=True)
class LlavaArchitecture:
    """One LLaVA format: its transformers classes and the image flags it can train and serve."""

    name: str
    model_type: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    processor_class: type[ProcessorMixin]
    image_aspect_ratios: tuple[str, ...]  # what the model trains and serves; the first one is the default
    patch_merge_types: tuple[str, ...]
    has_image_newline: bool
    processor_aspect_ratios: tuple[str, ...]  # what its processor can prepare (dataset input)
    title: str  # the name in messages: 'LLaVA-NeXT', 'LLaVA-1.5'
    encoder_types: tuple[str, ...] = ("clip_vision_model", "siglip_vision_model")  # vision config model_types it takes
    grid_units: tuple[tuple[int, int], ...] = ()  # default anyres grid (rows, cols) in tower sizes; () = one tile
    special_tokens: tuple[str, ...] = (IMAGE_TOKEN,)  # placeholders its processor expands
    processor_count_fields: tuple[str, ...] = ("patch_size", "vision_feature_select_strategy")  # fix the token count

    def resolve_image_flags(self, image_aspect_ratio: str | None, mm_patch_merge_type: str | None) -> tuple[str, str]:
        """(aspect ratio, merge type) with None -> this architecture's default; one-line error if it cannot do them."""
        aspect = image_aspect_ratio or self.image_aspect_ratios[0]
        merge = mm_patch_merge_type or self.patch_merge_types[0]
        if aspect not in IMAGE_ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio {aspect!r}: expected one of {', '.join(IMAGE_ASPECT_RATIOS)}")
        if merge not in PATCH_MERGE_TYPES:
            raise ValueError(f"mm_patch_merge_type {merge!r}: expected one of {', '.join(PATCH_MERGE_TYPES)}")
        if aspect not in self.image_aspect_ratios or merge not in self.patch_merge_types:
            others = [arch for arch in ARCHITECTURES.values() if arch is not self]
            fitting = ([arch for arch in others if aspect in arch.image_aspect_ratios]
                       or [arch for arch in others if merge in arch.patch_merge_types] or others)
            hint = "; ".join(f"use arch {arch.name!r} for {'/'.join(arch.image_aspect_ratios)} + "
                             f"{'/'.join(arch.patch_merge_types)}" for arch in fitting)
            raise ValueError(
                f"image_aspect_ratio {aspect!r} + mm_patch_merge_type {merge!r}: architecture {self.name!r} "
                f"({self.model_class.__name__}) takes {'/'.join(self.image_aspect_ratios)} + "
                f"{'/'.join(self.patch_merge_types)}; {hint}"
            )
        return aspect, merge

    def check_available(self) -> None:
        """One line naming what this environment lacks to build or load this architecture's processor."""

    def check_encoder(self, vision_config: PretrainedConfig, encoder: str | Path) -> None:
        """One line naming the encoder if this architecture cannot take its tower type."""
        if vision_config.model_type not in self.encoder_types:
            raise ValueError(f"encoder {encoder}: architecture {self.name!r} ({self.model_class.__name__}) takes a "
                             f"{' or '.join(self.encoder_types)} tower, not {vision_config.model_type}")

    def tower_for(self, tower: PreTrainedModel, select_layer: int) -> tuple[PreTrainedModel, int]:
        """(the tower the model holds, its `vision_feature_layer`) for LLaVA's `mm_vision_select_layer`.

        Default: the encoder's whole vision model, read at the select layer."""
        return tower, select_layer

    def token_fields(self, tokenizer: Any) -> dict[str, int]:
        """Config fields naming the placeholder token ids (the tokenizer holds `special_tokens`)."""
        return {"image_token_index": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}

    def build_processor(self, image_processor: Any, tokenizer: Any, vision_config: PretrainedConfig, strategy: str,
                        chat_template: str | None) -> ProcessorMixin:
        """This architecture's processor over the image processor and tokenizer, counting tokens as the model reads."""
        has_cls = vision_config.model_type == "clip_vision_model"
        return self.processor_class(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=vision_config.patch_size,
            vision_feature_select_strategy=strategy, image_token=IMAGE_TOKEN,
            num_additional_image_tokens=int(has_cls),  # tokens before the patches
            chat_template=chat_template,
        )

    def max_image_tokens(self, processor: ProcessorMixin, image_aspect_ratio: str) -> tuple[int, bool]:
        """(image tokens an image can take at most, whether every image takes exactly that).

        Default: one tile, every image the same count."""
        return self.num_image_tokens(processor, 1, 1, image_aspect_ratio), True

    def build_config(self, vision_config: PretrainedConfig, text_config: PretrainedConfig, **fields: Any) -> PretrainedConfig:
        """The model config; `fields` are LlavaConfig / LlavaNextConfig keyword arguments."""
        raise NotImplementedError

    def image_processor(self, encoder: str | Path, image_size: int, *, image_aspect_ratio: str,
                        image_grid_pinpoints: list[list[int]] | None = None):
        """The encoder's preprocessing as this architecture's image processor, set for the aspect flag."""
        raise NotImplementedError

    def set_image_aspect_ratio(self, processor: ProcessorMixin, image_aspect_ratio: str) -> None:
        """Make a loaded processor preprocess as the run trains, so the saved processor serves the same way."""

    def prepare_image(self, processor: ProcessorMixin, image: Image.Image,
                      image_aspect_ratio: str) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """(pixel_values [tiles, 3, H, W], image_sizes [2] = original (height, width) or None when the model
        takes none, number of image tokens the model consumes for this image: the processor's own count)."""
        raise NotImplementedError

    def num_image_tokens(self, processor: ProcessorMixin, height: int, width: int, image_aspect_ratio: str) -> int:
        """Image tokens of an image of this (height, width), without its pixels: the count `prepare_image` gives.

        The training data's length pre-pass asks this for every over-long candidate; this default prepares a
        blank image of the size (an architecture with a closed-form count overrides it)."""
        return self.prepare_image(processor, Image.new("RGB", (width, height)), image_aspect_ratio)[2]

    def load(self, path: str | Path, dtype: torch.dtype | None = None,
             what: str = "model") -> tuple[PreTrainedModel, ProcessorMixin]:
        """Model (in `dtype`, else transformers' default) + processor, with the plain transformers classes.

        Strict: a weight missing from the checkpoint is an error naming `what`, never a random init."""
        kwargs = {} if dtype is None else {"dtype": dtype}
        model = load_pretrained_strict(self.model_class, path, what, **kwargs)
        return model, self.processor_class.from_pretrained(path)


def tokens_per_tile(vision_config: PretrainedConfig, strategy: str) -> int:
    """Image tokens of one tile: patches (+ CLS with strategy 'full' for a CLIP tower), e.g. 576 at 336/14."""
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    has_cls = vision_config.model_type == "clip_vision_model"
    return patches + int(has_cls and strategy == "full")


def expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """LLaVA's 'pad' preprocessing: paste the image centred on a square of the mean colour."""
    width, height = image.size
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def mean_colour(image_processor: Any) -> tuple[int, ...]:
    """LLaVA's pad background, `tuple(int(x * 255) for x in image_mean)` (truncated, as LLaVA and transformers)."""
    return tuple(int(x * 255) for x in image_processor.image_mean)


def tile_size(image_processor: Any) -> tuple[int, int]:
    for spec in (image_processor.crop_size, image_processor.size):
        spec = dict(spec or {})
        if spec.get("height") and spec.get("width"):
            return int(spec["height"]), int(spec["width"])
    edge = int(image_processor.size["shortest_edge"])
    return edge, edge


class LlavaNextArchitecture(LlavaArchitecture):
    def build_config(self, vision_config, text_config, *, image_grid_pinpoints=None, **fields):
        return LlavaNextConfig(vision_config=vision_config, text_config=text_config,
                               image_grid_pinpoints=image_grid_pinpoints, **fields)

    def image_processor(self, encoder, image_size, *, image_aspect_ratio, image_grid_pinpoints=None):
        settings = encoder_image_settings(encoder, image_size)
        return LlavaNextImageProcessor(image_grid_pinpoints=image_grid_pinpoints, do_pad=True, **settings)

    def prepare_image(self, processor, image, image_aspect_ratio):
        image_processor = processor.image_processor
        original_size = torch.tensor([image.height, image.width], dtype=torch.long)
        if image_aspect_ratio == "anyres":
            pixel_values = image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        else:
            # One tile from a LlavaNext processor (data prepared for LlavaForConditionalGeneration by hand).
            tile_height, tile_width = tile_size(image_processor)
            if image_aspect_ratio == "pad":
                image = expand2square(image, mean_colour(image_processor))
            else:
                image = ImageOps.fit(image, (tile_width, tile_height), method=Image.Resampling.BICUBIC)
            # The base tile of a one-pinpoint anyres pass is the image resized to the tile: reuse the
            # processor's resize/rescale/normalize rather than re-implementing them.
            out = image_processor(images=[image], image_grid_pinpoints=[[tile_height, tile_width]], return_tensors="pt")
            pixel_values = out["pixel_values"][0][:1]
        return pixel_values, original_size, self.num_image_tokens(processor, *original_size.tolist(), image_aspect_ratio)

    def num_image_tokens(self, processor, height, width, image_aspect_ratio):
        tile_height, tile_width = tile_size(processor.image_processor)
        if image_aspect_ratio == "anyres":
            # The processor's own expansion rule (LlavaNextProcessor.replace_image_token).
            num_tokens = processor._get_number_of_features(height, width, tile_height, tile_width)
        else:
            patch = processor.patch_size
            num_tokens = (tile_height // patch) * (tile_width // patch) + processor.num_additional_image_tokens
        return int(num_tokens) - int(processor.vision_feature_select_strategy == "default")

    def max_image_tokens(self, processor, image_aspect_ratio):
        if image_aspect_ratio != "anyres":
            return super().max_image_tokens(processor, image_aspect_ratio)
        # An image's anyres grid is one of the pinpoints with padding removed, so a pinpoint-shaped image
        # (no padding) takes the most tokens.
        pinpoints = processor.image_processor.image_grid_pinpoints
        return max(self.num_image_tokens(processor, h, w, image_aspect_ratio) for h, w in pinpoints), False


class LlavaOnevisionArchitecture(LlavaArchitecture):
    """LLaVA-OneVision: SigLIP tower cut after the layer LLaVA reads, anyres_max_9, 'full' selection."""

    def tower_for(self, tower, select_layer):
        # LLaVA-NeXT's SigLipVisionTower deletes the encoder's last layer and its head and reads
        # hidden_states[-1]; the llava-hf conversions store that tower (26 layers, vision_use_head False)
        # with vision_feature_layer -1. Same here for any select layer: keep the layers up to the one it
        # names (hidden_states[k] is layer k's output, 0 the embeddings), read the last.
        layers = tower.config.num_hidden_layers
        keep = select_layer if select_layer >= 0 else layers + 1 + select_layer
        if not 1 <= keep <= layers:
            raise ValueError(f"mm_vision_select_layer {select_layer}: architecture {self.name!r} reads a layer "
                             f"output of the {layers}-layer tower (1..{layers} or -1..-{layers})")
        del tower.encoder.layers[keep:]
        tower.config.num_hidden_layers = keep
        if getattr(tower, "use_head", False):  # the pooling head reads post_layernorm(last layer): unused
            del tower.head
            tower.use_head = False
        tower.config.vision_use_head = False
        return tower, -1

    def token_fields(self, tokenizer):
        return {"image_token_index": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                "video_token_index": tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)}

    def build_config(self, vision_config, text_config, *, image_grid_pinpoints=None, vision_aspect_ratio=None, **fields):
        return LlavaOnevisionConfig(vision_config=vision_config, text_config=text_config,
                                    image_grid_pinpoints=image_grid_pinpoints,
                                    vision_aspect_ratio=vision_aspect_ratio or self.image_aspect_ratios[0], **fields)

    def image_processor(self, encoder, image_size, *, image_aspect_ratio, image_grid_pinpoints=None):
        settings = encoder_image_settings(encoder, image_size)
        # The base tile is the image resized to the tower's size (no crop), as the llava-hf processors.
        settings["size"] = {"height": image_size, "width": image_size}
        settings["do_center_crop"] = False
        return LlavaOnevisionImageProcessor(image_grid_pinpoints=image_grid_pinpoints, do_pad=True, **settings)

    def check_available(self):
        # transformers (5.25) constructs LlavaOnevisionProcessor only with its video processor, which is
        # torchvision-only; training and eval here are images-only, but the processor cannot be had without it.
        if not is_torchvision_available():
            raise ValueError(f"architecture {self.name!r}: transformers' {self.processor_class.__name__} needs a "
                             "video processor, which needs torchvision: install the torchvision build of your torch")

    def build_processor(self, image_processor, tokenizer, vision_config, strategy, chat_template):
        self.check_available()
        from transformers import LlavaOnevisionVideoProcessor

        normalisation = {key: getattr(image_processor, key) for key in ("image_mean", "image_std", "resample", "size")}
        return self.processor_class(
            image_processor=image_processor, tokenizer=tokenizer,
            video_processor=LlavaOnevisionVideoProcessor(**normalisation),  # videos: the tower's own preprocessing
            num_image_tokens=tokens_per_tile(vision_config, strategy), vision_feature_select_strategy=strategy,
            image_token=IMAGE_TOKEN, video_token=VIDEO_TOKEN, vision_aspect_ratio=self.image_aspect_ratios[0],
            chat_template=chat_template,
        )

    def prepare_image(self, processor, image, image_aspect_ratio):
        pixel_values = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        original_size = torch.tensor([image.height, image.width], dtype=torch.long)
        return pixel_values, original_size, self.num_image_tokens(processor, image.height, image.width, image_aspect_ratio)

    def num_image_tokens(self, processor, height, width, image_aspect_ratio):
        # The processor's own expansion rule (LlavaOnevisionProcessor.replace_image_token, one image per sample).
        tile_height, tile_width = tile_size(processor.image_processor)
        num_tokens = processor._get_number_of_features(height, width, tile_height, tile_width)
        return int(num_tokens) - int(processor.vision_feature_select_strategy == "default")

    def max_image_tokens(self, processor, image_aspect_ratio):
        # The unpadded grid of an image fits inside its pinpoint (rows x cols tiles of side x side patches) and
        # keeps its size only while its area is under slack^2 * N tiles (anyres_max_N), else it shrinks to N
        # tiles; one newline per row. That bounds base + grid + newlines without reading the image.
        side = math.isqrt(processor.num_image_tokens)
        tile_height, _ = tile_size(processor.image_processor)
        max_tiles = int(processor.vision_aspect_ratio.removeprefix("anyres_max_"))
        area_cap = int(ANYRES_MAX_SLACK ** 2 * max_tiles * side * side)
        bound = 0
        for height, width in processor.image_processor.image_grid_pinpoints:
            rows, cols = height // tile_height * side, width // tile_height * side
            bound = max(bound, min(rows * cols, area_cap) + rows)
        return processor.num_image_tokens + bound, False


class LlavaOneTileArchitecture(LlavaArchitecture):
    def build_config(self, vision_config, text_config, *, image_grid_pinpoints=None, **fields):
        strategy = fields.get("vision_feature_select_strategy", "default")
        return LlavaConfig(vision_config=vision_config, text_config=text_config,
                           image_seq_length=tokens_per_tile(vision_config, strategy), **fields)

    def image_processor(self, encoder, image_size, *, image_aspect_ratio, image_grid_pinpoints=None):
        # transformers' LlavaImageProcessor(do_pad=True) is LLaVA's expand2square (background = mean colour).
        return LlavaImageProcessor(do_pad=image_aspect_ratio == "pad", **encoder_image_settings(encoder, image_size))

    def set_image_aspect_ratio(self, processor, image_aspect_ratio):
        processor.image_processor.do_pad = image_aspect_ratio == "pad"

    def prepare_image(self, processor, image, image_aspect_ratio):
        # square: resize the short side + centre crop; pad: expand2square first (do_pad), as LLaVA-1.5.
        pixel_values = processor.image_processor(
            images=[image], do_pad=image_aspect_ratio == "pad", return_tensors="pt")["pixel_values"]
        # No image_sizes: LlavaForConditionalGeneration would split the features by them (Pixtral's rule).
        return pixel_values, None, self.num_image_tokens(processor, image.height, image.width, image_aspect_ratio)

    def num_image_tokens(self, processor, height, width, image_aspect_ratio):
        # LlavaProcessor's own count for its one tile (patches + CLS - 1 with strategy 'default'), whatever the image.
        tile_height, tile_width = tile_size(processor.image_processor)
        crop = {"height": tile_height, "width": tile_width}
        return int(processor._get_num_multimodal_tokens(image_sizes=[[tile_height, tile_width]], crop_size=crop)["num_image_tokens"][0])


ARCHITECTURES: dict[str, LlavaArchitecture] = {
    "llava_next": LlavaNextArchitecture(
        name="llava_next", model_type="llava_next", config_class=LlavaNextConfig,
        model_class=LlavaNextForConditionalGeneration, processor_class=LlavaNextProcessor,
        image_aspect_ratios=("anyres",), patch_merge_types=("spatial_unpad",), has_image_newline=True,
        processor_aspect_ratios=("anyres", "pad", "square"), title="LLaVA-NeXT", grid_units=LLAVA_NEXT_GRID,
    ),
    "llava": LlavaOneTileArchitecture(
        name="llava", model_type="llava", config_class=LlavaConfig,
        model_class=LlavaForConditionalGeneration, processor_class=LlavaProcessor,
        image_aspect_ratios=("pad", "square"), patch_merge_types=("flat",), has_image_newline=False,
        processor_aspect_ratios=("pad", "square"), title="LLaVA-1.5",
    ),
    "llava_onevision": LlavaOnevisionArchitecture(
        name="llava_onevision", model_type="llava_onevision", config_class=LlavaOnevisionConfig,
        model_class=LlavaOnevisionForConditionalGeneration, processor_class=LlavaOnevisionProcessor,
        image_aspect_ratios=("anyres_max_9",), patch_merge_types=("spatial_unpad",), has_image_newline=True,
        processor_aspect_ratios=("anyres_max_9",), title="LLaVA-OneVision",
        # 'full' reads every patch: the processor counts a tile as a square of patches, so no CLS tower.
        encoder_types=("siglip_vision_model",), grid_units=ONEVISION_GRID, special_tokens=(IMAGE_TOKEN, VIDEO_TOKEN),
        processor_count_fields=("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio"),
    ),
}


def get_architecture(name: str | None) -> LlavaArchitecture:
    """'llava_next' / 'llava' / 'llava_onevision' (None -> llava_next) -> its LlavaArchitecture; one-line error otherwise."""
    key = name or DEFAULT_ARCHITECTURE
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown LLaVA architecture {key!r}; valid: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[key]


def model_types() -> tuple[str, ...]:
    """The config model_types of the LLaVA architectures ('llava_next', 'llava', 'llava_onevision')."""
    return tuple(arch.model_type for arch in ARCHITECTURES.values())


def require_llava(path: str | Path, what: str) -> LlavaArchitecture:
    """The architecture of the LLaVA checkpoint at `path`; one line naming `what` if it holds something else.

    A LLaVA config class reads any config.json (a CLIP's too) and the load would then start every weight
    at random: the model_type is checked first."""
    config = require_model_type(path, set(model_types()), what,
                                " or ".join(f"a {arch.title} checkpoint ({arch.model_type!r})"
                                            for arch in ARCHITECTURES.values()))
    return architecture_of(config)


def architecture_of(source: str | Path | PretrainedConfig | PreTrainedModel | ProcessorMixin) -> LlavaArchitecture:
    """The architecture of a checkpoint dir, a config, a model or a processor (by model_type / class)."""
    if isinstance(source, (str, Path)):
        config_file = Path(source) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"no LLaVA checkpoint (config.json) in {source}")
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_file}: not valid JSON ({error.msg})") from None
        origin = str(source)
    elif isinstance(source, ProcessorMixin):
        for arch in ARCHITECTURES.values():
            if isinstance(source, arch.processor_class):
                return arch
        raise ValueError(f"{type(source).__name__} is not a LLaVA processor "
                         f"({', '.join(arch.processor_class.__name__ for arch in ARCHITECTURES.values())})")
    else:
        model_type, origin = getattr(source, "model_type", None) or source.config.model_type, type(source).__name__
    for arch in ARCHITECTURES.values():
        if arch.model_type == model_type:
            return arch
    raise ValueError(f"{origin}: model_type {model_type!r} is not a LLaVA architecture ({', '.join(a.model_type for a in ARCHITECTURES.values())})")


def load_llava(path: str | Path, dtype: torch.dtype | None = None) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Model + processor of a LLaVA checkpoint of any of the architectures, with plain transformers classes."""
    return architecture_of(path).load(path, dtype)
