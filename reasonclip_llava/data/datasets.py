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

How captions become samples (``samples=``):

    per_image  one sample per row and epoch; the row's caption pair (or caption) cycles over epochs
    all_pairs  the published way: every caption pair of a row its own sample (ReasonLite stage 1:
               len = 9 x rows, item k -> row k // 9, pair ((k % 9) // 3, k % 3); a stage-0 caption
               pool of 3: 3 x rows; ReasonPro: 1 x rows), rows of other sizes by their own counts

``restrict_rows(rows)`` keeps a subset of the file's rows (the held-out split); ``image_groups`` gives
every sample of one or more datasets the id of its image, for ``DistinctImageSampler``.

Which texts a sample gets depends on (seed, epoch, index) only: call ``dataset.set_epoch(epoch)``
together with ``sampler.set_epoch(epoch)`` before each epoch, and keep ``persistent_workers=False``
so the workers see the new epoch. A malformed row raises ``ValueError("<file> row <i>: ...")``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from torch.utils.data import Dataset

from ..images import IMAGE_ERRORS, load_image
from .rows import LiteSchema, ProSchema, ReadSchema, RowTable

logger = logging.getLogger(__name__)
_MAX_WARNINGS = 10
SAMPLE_MODES = ("per_image", "all_pairs")
# Earlier names of images.load_image, the one image-loading rule (kept for code written against them).
open_image = open_image_or_raise = load_image


def make_sample(index: int, texts: dict[str, Any], image: Image.Image, image_processor: Callable | None) -> dict[str, Any]:
    """One training sample: its index, its texts, and pixel_values (or the PIL image when no processor is given)."""
    if image_processor is None:
        return {"index": index, **texts, "image": image}
    return {"index": index, **texts, "pixel_values": pixel_values(image, image_processor)}


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
        samples: str = "per_image",
    ):
        if samples not in SAMPLE_MODES:
            raise ValueError(f"samples must be one of {SAMPLE_MODES}, got {samples!r}")
        self.schema = schema
        self.rows = RowTable(source, ("image_path", *schema.fields), schema.optional)
        self.image_root = Path(image_root) if image_root is not None else Path(source).parent
        self.image_processor = image_processor
        self.seed = seed
        self.samples = samples
        self.epoch = 0
        self.skipped = 0  # samples dropped for a missing / unreadable image (in this process)
        self.skipped_paths: list[str] = []
        self.restrict_rows(None)

    def restrict_rows(self, row_indices: Sequence[int] | np.ndarray | None) -> "ImageTextDataset":
        """Read only these rows of the file (None: all), in this order; all_pairs samples are recounted."""
        self.row_indices = np.arange(len(self.rows), dtype=np.int64) if row_indices is None else np.asarray(row_indices, dtype=np.int64)
        self.offsets = None  # all_pairs: sample k belongs to slot s with offsets[s] <= k < offsets[s + 1]
        if self.samples == "all_pairs":
            counts = self.schema.pair_counts(self.rows)[self.row_indices]
            empty = np.flatnonzero(counts == 0)
            if len(empty):
                raise ValueError(f"{self.rows.where(int(self.row_indices[empty[0]]))}: no captions in {list(self.schema.fields)}")
            self.offsets = np.concatenate([[0], np.cumsum(counts)])
        return self

    def subset(self, row_indices: Sequence[int] | np.ndarray) -> "ImageTextDataset":
        """A copy of this dataset over other rows of the same file (the file is not read again)."""
        return copy.copy(self).restrict_rows(row_indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.row_indices) if self.offsets is None else int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int | None]:
        """(row in the file, caption pair of that row or None for per_image) of sample `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.rows.path}: sample {index} out of range (0..{len(self) - 1})")
        if self.offsets is None:
            return int(self.row_indices[index]), None
        slot = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return int(self.row_indices[slot]), index - int(self.offsets[slot])

    def row_image_paths(self) -> pa.Array:
        """image_path of every row this dataset reads, in its row order."""
        return self.rows.column_values("image_path").take(pa.array(self.row_indices)).combine_chunks()

    def image_path(self, index: int, row: dict | None = None) -> Path:
        value = (row if row is not None else self.rows.row(index))["image_path"]
        if not isinstance(value, str) or not value:
            raise ValueError(f"{self.rows.where(index)}: field 'image_path' must be a non-empty string, got {value!r}")
        path = Path(value)
        return path if path.is_absolute() else self.image_root / path

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        index = int(index)
        row_index, pair = self.locate(index)
        row = self.rows.row(row_index)
        # Texts first: a malformed row is an error even when its image is also missing.
        texts = self.schema.texts(row, self.rows.where(row_index), key=row_index, epoch=self.epoch, seed=self.seed, pair=pair)
        path = self.image_path(row_index, row)
        try:
            image = load_image(path)
        except IMAGE_ERRORS as err:
            self._skip(self.rows.where(row_index), path, err)
            return None
        return make_sample(index, texts, image, self.image_processor)

    def _skip(self, where: str, path: Path, err: Exception) -> None:
        self.skipped += 1
        self.skipped_paths.append(str(path))
        if self.skipped <= _MAX_WARNINGS:
            logger.warning("%s: skipping image %s (%s: %s)", where, path, type(err).__name__, err)


def image_groups(parts: Sequence[ImageTextDataset]) -> np.ndarray:
    """For every sample of `parts` read one after another, an integer id of its image (same image_path, same id)."""
    paths = pa.concat_arrays([part.row_image_paths() for part in parts])
    codes = pc.dictionary_encode(paths).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    groups, start = [], 0
    for part in parts:
        part_codes = codes[start : start + len(part.row_indices)]
        start += len(part.row_indices)
        groups.append(part_codes if part.offsets is None else np.repeat(part_codes, np.diff(part.offsets)))
    return np.concatenate(groups)


class ReasonLiteDataset(ImageTextDataset):
    """ReasonLite parquet/JSONL {[id,] image_path, tb, trl}: (descriptive, reasoning) pairs; see `samples`."""

    def __init__(self, source: str | Path, image_root: str | Path | None = None,
                 image_processor: Callable | None = None, seed: int = 0, samples: str = "per_image"):
        super().__init__(source, LiteSchema(), image_root, image_processor, seed, samples)


class ReasonProDataset(ImageTextDataset):
    """ReasonPro parquet/JSONL {image_path, trp, trp_cls[, trp_cls_ls]}: reasoning caption + text/image category labels."""

    def __init__(self, source: str | Path, image_root: str | Path | None = None,
                 image_processor: Callable | None = None, seed: int = 0, samples: str = "per_image"):
        super().__init__(source, ProSchema(), image_root, image_processor, seed, samples)


class ReadDataset(ImageTextDataset):
    """READ samples: caption, paraphrase, reconstruction target and k hard negatives per image.

    `caption_columns` names the caption fields to pool: ("captions",) for COCO-style rows,
    ("tb",) to run READ on ReasonLite's descriptive captions.
    """

    def __init__(self, source: str | Path, image_root: str | Path | None = None,
                 image_processor: Callable | None = None, seed: int = 0,
                 caption_columns: Sequence[str] = ("captions",), k: int = 3,
                 negative_generator: Callable[[str, object], list[str]] | None = None, samples: str = "per_image",
                 recon_target: str = "any"):
        schema = ReadSchema(caption_columns, k=k, negative_generator=negative_generator, seed=seed, recon_target=recon_target)
        super().__init__(source, schema, image_root, image_processor, seed, samples)
