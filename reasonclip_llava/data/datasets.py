"""Map-style datasets over parquet / JSONL rows (ReasonLite, ReasonPro, READ captions).

A sample is a dict (``None`` when its image is missing or unreadable: the collator drops it and
reports ``num_skipped``; ``dataset.skipped`` counts it in the process that read it)::

    ReasonLiteDataset -> {"index", "pixel_values" | "image", "desc", "reason"}
    ReasonProDataset  -> {"index", "pixel_values" | "image", "reason", "text_category", "image_categories"}
    ReadDataset       -> {"index", "pixel_values" | "image", "caption", "paraphrase", "recon_target", "negatives"}

``pixel_values`` ([3, H, W] float tensor) comes from the ``image_processor`` given (any transformers
image processor, called as ``image_processor(images=image, return_tensors="pt")``); without one the
sample carries the PIL ``image``. Image paths are resolved against ``image_root`` (default: the
data file's folder); absolute paths are used as they are.

Which texts a sample gets depends on (seed, epoch, index) only: call ``dataset.set_epoch(epoch)``
together with ``sampler.set_epoch(epoch)`` before each epoch, and keep ``persistent_workers=False``
so the workers see the new epoch. A malformed row raises ``ValueError("<file> row <i>: ...")``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .rows import LiteSchema, ProSchema, ReadSchema, RowTable

logger = logging.getLogger(__name__)
_MAX_WARNINGS = 10
IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def open_image(source: Any) -> Image.Image:
    """Fully decoded RGB image from a path or a file object (raises one of IMAGE_ERRORS when unreadable)."""
    with Image.open(source) as image:
        return image.convert("RGB")


def make_sample(index: int, texts: dict[str, Any], image: Image.Image, image_processor: Callable | None) -> dict[str, Any]:
    """One training sample: its index, its texts, and pixel_values (or the PIL image when no processor is given)."""
    if image_processor is None:
        return {"index": index, **texts, "image": image}
    return {"index": index, **texts, "pixel_values": pixel_values(image, image_processor)}


def open_image_or_raise(path: str | Path, owner: str | None = None) -> Image.Image:
    """open_image where a bad image is the caller's error: one line naming `owner` (a sample, question or item) and the path."""
    prefix = f"{owner}: " if owner else ""
    try:
        return open_image(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{prefix}image not found: {path}") from None
    except IMAGE_ERRORS as error:
        raise ValueError(f"{prefix}cannot read image {path}: {error}") from None


def pixel_values(image: Image.Image, image_processor: Callable) -> Any:
    return image_processor(images=image, return_tensors="pt")["pixel_values"][0]


class ImageTextDataset(Dataset):
    """Rows of one file + a schema that turns a row into texts; images loaded and processed per sample."""

    def __init__(
        self,
        source: str | Path,
        schema: LiteSchema | ProSchema | ReadSchema,
        image_root: str | Path | None = None,
        image_processor: Callable | None = None,
        seed: int = 0,
    ):
        self.schema = schema
        self.rows = RowTable(source, ("image_path", *schema.fields), schema.optional)
        self.image_root = Path(image_root) if image_root is not None else Path(source).parent
        self.image_processor = image_processor
        self.seed = seed
        self.epoch = 0
        self.skipped = 0  # samples dropped for a missing / unreadable image (in this process)
        self.skipped_paths: list[str] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def image_path(self, index: int, row: dict | None = None) -> Path:
        value = (row if row is not None else self.rows.row(index))["image_path"]
        if not isinstance(value, str) or not value:
            raise ValueError(f"{self.rows.where(index)}: field 'image_path' must be a non-empty string, got {value!r}")
        path = Path(value)
        return path if path.is_absolute() else self.image_root / path

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        index = int(index)
        row = self.rows.row(index)
        # Texts first: a malformed row is an error even when its image is also missing.
        texts = self.schema.texts(row, self.rows.where(index), key=index, epoch=self.epoch, seed=self.seed)
        path = self.image_path(index, row)
        try:
            image = open_image(path)
        except IMAGE_ERRORS as err:
            self._skip(path, err)
            return None
        return make_sample(index, texts, image, self.image_processor)

    def _skip(self, path: Path, err: Exception) -> None:
        self.skipped += 1
        self.skipped_paths.append(str(path))
        if self.skipped <= _MAX_WARNINGS:
            logger.warning("skipping image %s (%s: %s)", path, type(err).__name__, err)


class ReasonLiteDataset(ImageTextDataset):
    """ReasonLite parquet/JSONL {image_path, tb, trl}: one (descriptive, reasoning) pair per image and epoch."""

    def __init__(self, source: str | Path, image_root: str | Path | None = None,
                 image_processor: Callable | None = None, seed: int = 0):
        super().__init__(source, LiteSchema(), image_root, image_processor, seed)


class ReasonProDataset(ImageTextDataset):
    """ReasonPro parquet/JSONL {image_path, trp, trp_cls}: reasoning caption + text/image category labels."""

    def __init__(self, source: str | Path, image_root: str | Path | None = None,
                 image_processor: Callable | None = None, seed: int = 0):
        super().__init__(source, ProSchema(), image_root, image_processor, seed)


class ReadDataset(ImageTextDataset):
    """READ samples: caption, paraphrase, reconstruction target and k hard negatives per image.

    `caption_columns` names the caption fields to pool: ("captions",) for COCO-style rows,
    ("tb",) to run READ on ReasonLite's descriptive captions.
    """

    def __init__(self, source: str | Path, image_root: str | Path | None = None,
                 image_processor: Callable | None = None, seed: int = 0,
                 caption_columns: Sequence[str] = ("captions",), k: int = 3,
                 negative_generator: Callable[[str, object], list[str]] | None = None, recon_target: str = "any"):
        schema = ReadSchema(caption_columns, k=k, negative_generator=negative_generator, seed=seed, recon_target=recon_target)
        super().__init__(source, schema, image_root, image_processor, seed)
