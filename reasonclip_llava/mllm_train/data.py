"""LLaVA conversation data for LlavaNext / Llava ForConditionalGeneration: dataset, length-grouped sampler, collator.

Rows follow LLaVA's JSON (or JSONL) format::

    {"id": "000001", "image": "coco/0001.jpg",                 # image optional, relative to image_folder
     "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]}

Each sample is rendered by a conversation template (templates.py), tokenized, and its ``<image>``
placeholder expanded to exactly the number of image tokens the model consumes for that image size: the
processor's own count (LlavaNextProcessor: anyres tiles + spatial_unpad + image_newline; LlavaProcessor:
one tile, e.g. 576). Labels are -100 everywhere except on assistant answers and their end-of-turn token
(`label_masking="llava_next"`: LLaVA-NeXT's preprocess_qwen labels, see templates.published_qwen_masking).

Long samples: a sample longer than `model_max_length` is truncated at the right, unless its image tokens
would be cut; then `__getitem__` raises ValueError naming the sample id (filter such rows beforehand; a
silent skip would change the epoch length under a distributed sampler).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..data.datasets import open_image_or_raise
from ..io_utils import read_utf8
from ..vlm.architectures import IMAGE_ASPECT_RATIOS, architecture_of, expand2square  # noqa: F401 (re-exported)
from .templates import (
    IMAGE_PLACEHOLDER,
    LABEL_MASKINGS,
    ConversationTemplate,
    TokenizerChatTemplate,
    get_template,
    published_qwen_masking,
    supervised_token_ids,
)

IGNORE_INDEX = -100


def load_rows(data_path: str | Path) -> list[dict[str, Any]]:
    """A LLaVA JSON list or a JSONL file (one object per line)."""
    path = Path(data_path)
    if not path.is_file():
        raise FileNotFoundError(f"LLaVA data file not found: {path}")
    text = read_utf8(path)
    if path.suffix != ".jsonl":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            rows = None
        if rows is not None:
            if not isinstance(rows, list):
                raise ValueError(f"{path}: expected a JSON list of samples, got {type(rows).__name__}")
            return rows
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
    return rows


def tokenize_segments(
    segments: list,
    tokenizer: Any,
    sample_id: str,
    template_name: str,
    prepend_bos: bool = False,
    max_length: int | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids and labels for rendered segments, with the tokenization-mismatch guard.

    The rendered text is tokenized once, in context (SentencePiece-style tokenizers add a prefix space
    at the start of a string, so pieces tokenized alone would differ), with character offsets: a token
    belongs to the segment its last character lies in. A token whose characters start in an earlier
    segment spans a supervised/unsupervised boundary (e.g. a template whose answer starts after a space
    that BPE merges into the answer's first word); the labels would be misaligned, so this raises
    instead of training on a zero or shifted loss. A token's characters run from the previous token's
    end, so offsets trimmed of their leading space still count that space.

    max_length: only the first max_length ids are wanted (the caller truncates there). The text is then
    tokenized in growing prefixes cut at segment boundaries (doubling the segment count), stopping once
    max_length ids lie before the prefix's last segment, so the cost is linear in what is kept, not in
    the conversation's length. The result is then at most max_length long.
    """
    if not getattr(tokenizer, "is_fast", False):
        return _tokenize_by_prefixes(segments, tokenizer, sample_id, template_name, prepend_bos)
    budget = None if max_length is None else max(max_length - int(prepend_bos), 0)
    count = len(segments) if budget is None else min(len(segments), 8)
    while True:
        texts = [segment.text for segment in segments[:count]]
        encoded = tokenizer("".join(texts), add_special_tokens=False, return_offsets_mapping=True)
        ends = list(itertools.accumulate(len(text) for text in texts))
        last_segment_start = ends[-2] if len(ends) > 1 else 0
        settled = sum(1 for _, end in encoded["offset_mapping"] if end <= last_segment_start)
        if count == len(segments) or settled >= budget:
            break
        count = min(len(segments), count * 2)
    input_ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    if budget is not None:
        input_ids, offsets = input_ids[:budget], offsets[:budget]  # (before the cut's last segment: final)
    labels: list[int] = []
    previous_end = 0
    for token, (start, end) in zip(input_ids, offsets):
        start = min(start, previous_end)
        first, last = bisect.bisect_right(ends, start), bisect.bisect_right(ends, max(end - 1, start))
        if first != last and end > start:
            raise ValueError(
                f"tokenization mismatch in sample {sample_id!r} with template {template_name!r}: a token crosses the "
                f"boundary after {segments[first].text[-30:]!r}; the template does not fit this tokenizer"
            )
        labels.append(token if segments[min(last, count - 1)].supervised else IGNORE_INDEX)
        previous_end = max(previous_end, end)
    if prepend_bos:
        input_ids = [tokenizer.bos_token_id] + input_ids
        labels = [IGNORE_INDEX] + labels
    return input_ids, labels


def _tokenize_by_prefixes(segments: list, tokenizer: Any, sample_id: str, template_name: str, prepend_bos: bool) -> tuple[list[int], list[int]]:
    """The same rule for slow tokenizers (no offsets): each prefix's tokens must start the full text's (quadratic)."""
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    input_ids = encode("".join(segment.text for segment in segments))
    labels: list[int] = []
    prefix = ""
    for position, segment in enumerate(segments):
        prefix += segment.text
        prefix_ids = input_ids if position == len(segments) - 1 else encode(prefix)
        if input_ids[: len(prefix_ids)] != prefix_ids or len(prefix_ids) < len(labels):
            raise ValueError(
                f"tokenization mismatch in sample {sample_id!r} with template {template_name!r}: a token crosses the "
                f"boundary after {segment.text[-30:]!r}; the template does not fit this tokenizer"
            )
        new_ids = prefix_ids[len(labels):]
        labels += new_ids if segment.supervised else [IGNORE_INDEX] * len(new_ids)
    if prepend_bos:
        input_ids = [tokenizer.bos_token_id] + input_ids
        labels = [IGNORE_INDEX] + labels
    return input_ids, labels


class LlavaConversationDataset(Dataset):
    """LLaVA conversation rows -> dict(input_ids, labels, pixel_values, image_sizes, id).

    processor: a transformers LlavaNextProcessor or LlavaProcessor whose tokenizer has the image token and
        whose `patch_size`, `vision_feature_select_strategy` and `num_additional_image_tokens` match the model.
    template: a name from templates.get_template ('plain', 'vicuna_v1', 'llama_3', 'qwen_1_5', 'auto', ...)
        or a ConversationTemplate.
    image_aspect_ratio: 'anyres' (LLaVA-NeXT tiles from the processor's image_grid_pinpoints: pixel_values
        [1 + tiles, 3, H, W]) or 'pad' / 'square' (one tile [1, 3, H, W]: the image padded to a square
        with the mean colour, or centre-cropped; the LLaVA-1.5 format of LlavaForConditionalGeneration).
        A LlavaProcessor takes 'pad' / 'square' only (its own do_pad rule), and items carry no image_sizes.
    label_masking: 'answers' (ours) or 'llava_next' (LLaVA-NeXT's preprocess_qwen, ChatML templates).
    """

    def __init__(
        self,
        data_path: str | Path,
        image_folder: str | Path | None,
        processor: Any,
        template: str | ConversationTemplate | TokenizerChatTemplate,
        model_max_length: int,
        image_aspect_ratio: str = "anyres",
        label_masking: str = "answers",
    ) -> None:
        if image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(f"unknown image_aspect_ratio {image_aspect_ratio!r}; valid: {', '.join(IMAGE_ASPECT_RATIOS)}")
        if label_masking not in LABEL_MASKINGS:
            raise ValueError(f"unknown label_masking {label_masking!r}; valid: {', '.join(LABEL_MASKINGS)}")
        self.architecture = architecture_of(processor)
        if image_aspect_ratio not in self.architecture.processor_aspect_ratios:
            raise ValueError(
                f"image_aspect_ratio {image_aspect_ratio!r}: a {type(processor).__name__} prepares "
                f"{'/'.join(self.architecture.processor_aspect_ratios)} images"
            )
        self.rows = load_rows(data_path)
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.template = get_template(template) if isinstance(template, str) else template
        if label_masking == "llava_next":
            self.template = published_qwen_masking(self.template)
        self.always_supervised = supervised_token_ids(self.template, processor.tokenizer)
        self.model_max_length = int(model_max_length)
        self.image_aspect_ratio = image_aspect_ratio
        self.image_token = processor.image_token
        self.image_token_id = processor.image_token_id
        if self.image_token_id is None or self.tokenizer.convert_ids_to_tokens(self.image_token_id) != self.image_token:
            raise ValueError(f"the processor's tokenizer has no {self.image_token!r} token; add it as a special token first")
        if getattr(processor, "patch_size", None) is None or getattr(processor, "vision_feature_select_strategy", None) is None:
            raise ValueError("processor.patch_size and processor.vision_feature_select_strategy must be set (they fix the image token count)")
        bos_id = self.tokenizer.bos_token_id
        adds_bos = bos_id is not None and self.tokenizer("a")["input_ids"][:1] == [bos_id]
        self.prepend_bos = bool(self.template.prefix_bos and adds_bos)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def modality_lengths(self) -> list[int]:
        """LLaVA's cheap length proxy (words in the conversation): positive with an image, negative without."""
        lengths = []
        for row in self.rows:
            words = sum(len(str(turn.get("value", "")).split()) for turn in row.get("conversations") or [])
            lengths.append(max(words, 1) if row.get("image") else -max(words, 1))
        return lengths

    # -- images ---------------------------------------------------------------------------------------
    def _load_image(self, row_id: str, relative: Any) -> Image.Image:
        if isinstance(relative, list):
            if len(relative) != 1:
                raise ValueError(f"sample {row_id!r}: {len(relative)} images; only single-image samples are supported")
            relative = relative[0]
        path = (self.image_folder / relative) if self.image_folder is not None else Path(relative)
        return open_image_or_raise(path, owner=f"sample {row_id!r}")

    def _preprocess_image(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """(pixel_values [tiles, 3, H, W], image_sizes [2] or None, number of image tokens): the architecture's rule."""
        pixel_values, image_sizes, num_tokens = self.architecture.prepare_image(self.processor, image, self.image_aspect_ratio)
        return pixel_values.float(), image_sizes, num_tokens

    # -- text -----------------------------------------------------------------------------------------
    def _conversations(self, row_id: str, row: dict[str, Any], has_image: bool) -> list[dict[str, Any]]:
        conversations = row.get("conversations")
        if not isinstance(conversations, list) or not conversations:
            raise ValueError(f"sample {row_id!r}: no 'conversations' list")
        messages = [dict(message) if isinstance(message, dict) else message for message in conversations]
        with_placeholder = [m for m in messages if isinstance(m, dict) and IMAGE_PLACEHOLDER in str(m.get("value", ""))]
        if not has_image:
            if with_placeholder:
                raise ValueError(f"sample {row_id!r}: text contains {IMAGE_PLACEHOLDER} but the row has no 'image'")
            return messages
        if len(with_placeholder) > 1:
            raise ValueError(f"sample {row_id!r}: {IMAGE_PLACEHOLDER} appears in {len(with_placeholder)} messages; expected one")
        # LLaVA preprocess_multimodal: the placeholder goes first in its message, followed by a newline.
        # A row with an image but no placeholder gets it in the first human message, as LLaVA-NeXT does.
        target = with_placeholder[0] if with_placeholder else next(
            (m for m in messages if isinstance(m, dict) and m.get("from") in ("human", "user")), None
        )
        if target is None:
            raise ValueError(f"sample {row_id!r}: no human message to attach the image to")
        target["value"] = IMAGE_PLACEHOLDER + "\n" + str(target["value"]).replace(IMAGE_PLACEHOLDER, "").strip()
        return messages

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        if not isinstance(row, dict):
            raise ValueError(f"row {index}: expected an object, got {type(row).__name__}")
        row_id = str(row.get("id", f"#{index}"))
        has_image = bool(row.get("image"))
        conversations = self._conversations(row_id, row, has_image)
        # Every round renders to at least one token, so rounds past model_max_length + 2 cannot reach the
        # kept tokens (one spare round keeps the cut away from them): they are neither rendered nor tokenized.
        conversations = conversations[: 2 * (self.model_max_length + 2)]
        try:
            segments = self.template.render(conversations, tokenizer=self.tokenizer, max_length=self.model_max_length)
        except ValueError as error:
            raise ValueError(f"sample {row_id!r}: {error}") from None
        # The placeholder becomes the processor's image token (one id), expanded below as LLaVA's
        # tokenizer_image_token does; it is a special token, so the text around it tokenizes the same.
        segments = [type(s)(s.text.replace(IMAGE_PLACEHOLDER, self.image_token), s.supervised) for s in segments]
        input_ids, labels = tokenize_segments(
            segments, self.tokenizer, row_id, self.template.name, prepend_bos=self.prepend_bos,
            max_length=self.model_max_length,  # later tokens are truncated anyway: not tokenized at all
        )
        if self.always_supervised:  # LLaVA-NeXT preprocess_qwen: structural tokens supervised in every turn
            labels = [token if token in self.always_supervised else label for token, label in zip(input_ids, labels)]

        pixel_values = image_sizes = None
        if has_image:
            image = self._load_image(row_id, row["image"])
            pixel_values, image_sizes, num_tokens = self._preprocess_image(image)
            positions = [i for i, token in enumerate(input_ids) if token == self.image_token_id]
            if not positions and len(input_ids) >= self.model_max_length:
                raise ValueError(
                    f"sample {row_id!r}: its image token lies beyond model_max_length {self.model_max_length}; "
                    "drop the row or raise model_max_length"
                )
            if len(positions) != 1:
                raise ValueError(f"sample {row_id!r}: expected one image token after rendering, found {len(positions)}")
            at = positions[0]
            input_ids = input_ids[:at] + [self.image_token_id] * num_tokens + input_ids[at + 1:]
            labels = labels[:at] + [IGNORE_INDEX] * num_tokens + labels[at + 1:]
            if at + num_tokens > self.model_max_length:
                raise ValueError(
                    f"sample {row_id!r}: its {num_tokens} image tokens end at position {at + num_tokens}, beyond "
                    f"model_max_length {self.model_max_length}; drop the row or raise model_max_length"
                )
        elif self.image_token_id in input_ids:
            raise ValueError(f"sample {row_id!r}: text contains the image token {self.image_token!r} but the row has no image")

        input_ids, labels = input_ids[: self.model_max_length], labels[: self.model_max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise ValueError(
                f"sample {row_id!r}: no supervised (assistant) token within model_max_length {self.model_max_length}"
            )
        return dict(
            input_ids=torch.tensor(input_ids, dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.long),
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            id=row_id,
        )


# -- length-grouped sampling (LLaVA's LengthGroupedSampler) -------------------------------------------
def split_to_even_chunks(indices: list[int], lengths: list[int], num_chunks: int) -> list[list[int]]:
    """Split a megabatch into `num_chunks` per-device batches of similar total length."""
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == per_chunk:
            totals[shortest] = math.inf
    return chunks


def length_grouped_indices(lengths: list[int], batch_size: int, world_size: int, generator: torch.Generator) -> list[int]:
    """Random megabatches of world_size * batch_size, each sorted longest first and split across the
    devices so that their total lengths are balanced."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch_size = world_size * batch_size
    result = []
    for start in range(0, len(order), megabatch_size):
        megabatch = sorted(order[start : start + megabatch_size], key=lambda i: lengths[i], reverse=True)
        result += [i for chunk in split_to_even_chunks(megabatch, lengths, world_size) for i in chunk]
    return result


def modality_length_grouped_indices(
    lengths: list[int], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """LLaVA's get_modality_length_grouped_indices: image (+) and text-only (-) samples never share a
    megabatch, except the two leftovers, which go last (image leftovers, then text leftovers) so that
    at most one batch per epoch mixes modalities (LLaVA sorts the joined leftovers, mixing more).
    Unlike LLaVA, every shuffle uses `generator`, so the order is reproducible."""
    if any(length == 0 for length in lengths):
        raise ValueError("modality lengths must be non-zero (+ with image, - text-only)")
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return length_grouped_indices([abs(x) for x in lengths], batch_size, world_size, generator)
    image_ids = [i for i, length in enumerate(lengths) if length > 0]
    text_ids = [i for i, length in enumerate(lengths) if length < 0]
    megabatch_size = world_size * batch_size

    def megabatches(ids: list[int]) -> list[list[int]]:
        local = length_grouped_indices([abs(lengths[i]) for i in ids], batch_size, world_size, generator)
        ordered = [ids[i] for i in local]
        return [ordered[i : i + megabatch_size] for i in range(0, len(ordered), megabatch_size)]

    image_megabatches, text_megabatches = megabatches(image_ids), megabatches(text_ids)
    leftovers = [image_megabatches.pop(), text_megabatches.pop()]
    full = image_megabatches + text_megabatches
    full = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    return [i for megabatch in full + leftovers for i in megabatch]


class LengthGroupedSampler(Sampler[int]):
    """LLaVA's LengthGroupedSampler: every index once per epoch, in megabatches of world_size * batch_size
    random samples of one modality (image / text-only), each split so that the `world_size` per-device
    batches get similar total lengths. Deterministic for a given (seed, epoch); call `set_epoch` each
    epoch. lengths: `LlavaConversationDataset.modality_lengths`. With gradient accumulation, pass
    world_size * accumulation_steps so that a whole optimizer step is one modality (as LLaVA does)."""

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        world_size: int = 1,
        group_by_modality: bool = True,
        seed: int = 0,
    ) -> None:
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be >= 1, got {batch_size}, {world_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.world_size = world_size
        self.group_by_modality = group_by_modality
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.group_by_modality:
            indices = modality_length_grouped_indices(self.lengths, self.batch_size, self.world_size, generator)
        else:
            indices = length_grouped_indices([abs(x) for x in self.lengths], self.batch_size, self.world_size, generator)
        return iter(indices)


# -- collation -------------------------------------------------------------------------------------------
class LlavaDataCollator:
    """Pads a list of dataset items into a LlavaNextForConditionalGeneration batch.

    Returns input_ids / labels / attention_mask [B, L] (pad id, -100, 0 on padding) and, when any sample
    has an image, pixel_values [N, T, 3, H, W] (tiles zero-padded to the largest T; the model drops the
    padding using image_sizes) and image_sizes [N, 2], where N counts only the samples WITH an image, in
    batch order. LlavaNext scatters all image features, image after image, into the image-token positions
    of the whole batch, so text-only rows simply contribute no image and no image token. If every image
    in the batch is a single tile ('pad'/'square' data), pixel_values is [N, 3, H, W] (LlavaForConditionalGeneration).
    Batches without images have no pixel_values / image_sizes keys.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; set tokenizer.pad_token")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side

    def _pad(self, sequences: list[torch.Tensor], value: int) -> torch.Tensor:
        longest = max(len(s) for s in sequences)
        out = torch.full((len(sequences), longest), value, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            if self.padding_side == "right":
                out[row, : len(sequence)] = sequence
            else:
                out[row, longest - len(sequence):] = sequence
        return out

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids = self._pad([f["input_ids"] for f in features], self.pad_token_id)
        labels = self._pad([f["labels"] for f in features], IGNORE_INDEX)
        attention_mask = self._pad([torch.ones_like(f["input_ids"]) for f in features], 0)
        batch = dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask)
        images = [f for f in features if f.get("pixel_values") is not None]
        if images:
            tiles = [f["pixel_values"] for f in images]
            if len({t.shape[1:] for t in tiles}) != 1:
                raise ValueError(f"images in a batch must share the tile shape, got {sorted({tuple(t.shape[1:]) for t in tiles})}")
            most = max(t.shape[0] for t in tiles)
            pixel_values = torch.zeros((len(tiles), most, *tiles[0].shape[1:]), dtype=tiles[0].dtype)
            for row, t in enumerate(tiles):
                pixel_values[row, : t.shape[0]] = t
            batch["pixel_values"] = pixel_values[:, 0] if most == 1 else pixel_values
            if images[0].get("image_sizes") is not None:  # LlavaNext only; Llava takes none
                batch["image_sizes"] = torch.stack([f["image_sizes"] for f in images])
        return batch
