"""open_clip's eval transform as a transformers image processor, for checkpoints converted from open_clip.

open_clip preprocesses with torchvision: ``Resize(size)`` (shorter edge, Pillow on PIL images, in the
image's own mode), ``CenterCrop(size)``, then ``convert("RGB")``, ToTensor and Normalize.
transformers' CLIPImageProcessor differs in two places:

- the centre crop: torchvision's offset is ``int(round((side - crop) / 2.0))`` (Python's round, halves to
  even), transformers floors it, so one image in four (``side - crop`` = 3 mod 4) is cut one pixel off;
- non-RGB images: transformers composites transparency onto white and converts before resizing;
  open_clip resizes first (Pillow resamples RGBA premultiplied, palette images nearest) and then drops
  the alpha channel.

``OpenCLIPImageProcessorPil`` (PIL backend) and ``OpenCLIPImageProcessor`` (torchvision backend, when
torchvision imports) do what open_clip does: a PIL image is resized and cropped with Pillow in its own mode
and converted with ``convert("RGB")``; arrays and tensors go through transformers' own resize and a
crop that rounds as torchvision's.

On disk the processor stays a plain ``CLIPImageProcessor`` config (no ``auto_map``, no code beside the
weights), so every reader loads it without remote code; the field ``reasonclip_preprocess: open_clip``
marks it, and `load_image_processor`, which every loader in this project calls, turns a marked config into
the class here. A reader outside the project gets transformers' CLIP processor: the same resize, mean and
std, with transformers' floored crop offset (one pixel off where side - crop = 3 mod 4, on the PIL backend;
transformers' torchvision backend crops as torchvision does).

This file imports nothing but transformers, numpy and PIL: it runs as a copied file on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import AutoImageProcessor, CLIPImageProcessorPil
from transformers.image_processing_base import ImageProcessingMixin
from transformers.utils import is_torchvision_available

PREPROCESS_KEY = "reasonclip_preprocess"  # in preprocessor_config.json: "open_clip" -> the classes below
OPEN_CLIP = "open_clip"


def torchvision_crop_offset(side: int, crop: int) -> int:
    """torchvision's CenterCrop offset (Python round: 1.5 -> 2, 2.5 -> 2); transformers floors instead."""
    return int(round((side - crop) / 2.0))


def resized_shorter_edge(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after torchvision's Resize(size): shorter edge -> size, longer edge int(size * long / short)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


class _OpenCLIPTransform:
    """The two steps open_clip does differently, shared by both backends (mixed in before transformers' class)."""

    def process_image(self, image: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(image, Image.Image) and kwargs.get("do_convert_rgb", self.do_convert_rgb):
            image = self._open_clip_geometry(image, kwargs).convert("RGB")
        return super().process_image(image, *args, **kwargs)

    def _open_clip_geometry(self, image: Image.Image, kwargs: dict[str, Any]) -> Image.Image:
        """Resize and crop a PIL image in its own mode, as open_clip's Resize + CenterCrop do. The later
        transformers resize and crop then see an image of the final size and change nothing."""
        size, crop_size = kwargs.get("size", self.size), kwargs.get("crop_size", self.crop_size)
        resample = kwargs.get("resample", self.resample)
        resample = getattr(resample, "value", resample)  # PILImageResampling -> the int Pillow takes
        if kwargs.get("do_resize", self.do_resize):
            shortest = size.get("shortest_edge") if isinstance(size, dict) else size.shortest_edge
            if shortest:
                image = image.resize(resized_shorter_edge(*image.size, shortest), resample)
            else:
                height, width = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
                image = image.resize((width, height), resample)
        if kwargs.get("do_center_crop", self.do_center_crop):
            height, width = (crop_size["height"], crop_size["width"]) if isinstance(crop_size, dict) else (crop_size.height, crop_size.width)
            if width <= image.width and height <= image.height:
                left, top = torchvision_crop_offset(image.width, width), torchvision_crop_offset(image.height, height)
                image = image.crop((left, top, left + width, top + height))
        return image

    def center_crop(self, image: Any, size: Any, **kwargs: Any) -> Any:
        """Arrays and tensors (channels first, any leading dims): the crop offset rounds as torchvision's."""
        height, width = image.shape[-2:]
        if size.height > height or size.width > width:
            return super().center_crop(image, size, **kwargs)  # padding, as transformers does
        top, left = torchvision_crop_offset(height, size.height), torchvision_crop_offset(width, size.width)
        return image[..., top : top + size.height, left : left + size.width]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["image_processor_type"] = "CLIPImageProcessor"  # what every reader loads without remote code
        out[PREPROCESS_KEY] = OPEN_CLIP  # what load_image_processor turns back into this class
        return out


class OpenCLIPImageProcessorPil(_OpenCLIPTransform, CLIPImageProcessorPil):
    """open_clip's eval transform on the PIL backend."""


if is_torchvision_available():
    from transformers.models.clip.image_processing_clip import CLIPImageProcessor

    class OpenCLIPImageProcessor(_OpenCLIPTransform, CLIPImageProcessor):
        """open_clip's eval transform on the torchvision backend."""

    IMAGE_PROCESSOR_CLASSES = {"pil": OpenCLIPImageProcessorPil, "torchvision": OpenCLIPImageProcessor}
else:  # transformers falls back to the PIL backend without torchvision, as for its own CLIP processor
    OpenCLIPImageProcessor = OpenCLIPImageProcessorPil
    IMAGE_PROCESSOR_CLASSES = {"pil": OpenCLIPImageProcessorPil}


def load_image_processor(path: str | Path, backend: str | None = None) -> ImageProcessingMixin:
    """The image processor of a checkpoint directory, as this project feeds its model: a config marked
    ``reasonclip_preprocess: open_clip`` gets open_clip's transform, any other `AutoImageProcessor`'s class."""
    config_file = Path(path) / "preprocessor_config.json"
    marked = False
    if config_file.is_file():
        try:
            marked = json.loads(config_file.read_text(encoding="utf-8")).get(PREPROCESS_KEY) == OPEN_CLIP
        except (ValueError, AttributeError):
            marked = False  # AutoImageProcessor below names the broken file
    if not marked:
        return AutoImageProcessor.from_pretrained(path, **({"backend": backend} if backend else {}))
    name = backend or ("torchvision" if "torchvision" in IMAGE_PROCESSOR_CLASSES else "pil")
    if name not in IMAGE_PROCESSOR_CLASSES:
        raise ValueError(f"{config_file}: image processor backend '{name}' is not available (torchvision does not import)")
    return IMAGE_PROCESSOR_CLASSES[name].from_pretrained(path)
