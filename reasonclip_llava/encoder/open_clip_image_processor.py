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
crop that rounds as torchvision's. The converter saves this file beside the checkpoint, so
``AutoImageProcessor.from_pretrained(path, trust_remote_code=True)`` loads it without reasonclip;
importing ``reasonclip_llava.encoder`` registers the classes, so the project loads it without remote code.

This file imports nothing but transformers, numpy and PIL: it runs as a copied file on its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import CLIPImageProcessorPil
from transformers.utils import is_torchvision_available

MODULE = Path(__file__).stem
AUTO_MAP = {"AutoImageProcessor": {"pil": f"{MODULE}.OpenCLIPImageProcessorPil", "torchvision": f"{MODULE}.OpenCLIPImageProcessor"}}


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
        out["image_processor_type"] = "OpenCLIPImageProcessor"  # the backend is picked at load time
        out["auto_map"] = AUTO_MAP
        return out

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> list[str]:
        """Also writes this file beside the config, so trust_remote_code loads it without reasonclip."""
        written = super().save_pretrained(save_directory, *args, **kwargs)
        target = Path(save_directory) / f"{MODULE}.py"
        if Path(__file__).resolve() != target.resolve():
            shutil.copyfile(__file__, target)
        return [*written, str(target)]


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
