"""LLaVA conversation data for LlavaNext / Llava ForConditionalGeneration: dataset, length pre-pass,
length-grouped sampler, collator (padded or packed).

Rows follow LLaVA's JSON (or JSONL) format::

    {"id": "000001", "image": "coco/0001.jpg",                 # image optional, relative to image_folder
     "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]}

Each sample is rendered by a conversation template (templates.py) and tokenized as LLaVA's own
preprocessing does (docs/LLAVA_RECIPES.md): the `<image>` placeholder is placed by the template's code
base rule (LLaVA-1.5 or LLaVA-NeXT `preprocess_multimodal`), the text on either side of an image is
tokenized separately (`tokenizer_image_token`), and the placeholder is expanded to exactly the number of
image tokens the model consumes for that image size: the processor's own count (LlavaNextProcessor: anyres
tiles + spatial_unpad + image_newline; LlavaProcessor: one tile, e.g. 576). Labels are -100 everywhere except
on assistant answers and their end-of-turn token (`label_masking="llava_next"`: LLaVA-NeXT's
preprocess_qwen / preprocess_llama3 labels, see templates.published_masking).

Length pre-pass: building the dataset measures every row (text tokens + the image tokens the architecture
inserts, anyres tiles included), prints one summary line and applies `long_rows` to the rows longer than
`model_max_length` (`skip`, default; `error`; `truncate_text`: cut the text at the right, never inside an
image's tokens, else the row is skipped). A malformed row (roles, placeholders, a missing image file, no
answer) is an error naming it, before step 1. So no row can stop a run mid-way except an image file that is
unreadable when it is first decoded.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from transformers import DataCollatorWithFlattening

from ..images import image_size, load_image
from ..io_utils import read_utf8
from ..vlm.architectures import IMAGE_ASPECT_RATIOS, architecture_of, expand2square  # noqa: F401 (re-exported)
from .templates import (
    IMAGE_PLACEHOLDER,
    LABEL_MASKINGS,
    ConversationTemplate,
    Segment,
    TokenizerChatTemplate,
    get_template,
    place_image,
    published_masking,
    supervised_token_ids,
)

IGNORE_INDEX = -100
LONG_ROWS = ("skip", "error", "truncate_text")


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


def split_at_token(segments: list[Segment], token: str | None) -> list[list[Segment]]:
    """The segments cut at every occurrence of `token` (the image token): the chunks LLaVA's
    `tokenizer_image_token` tokenizes one by one, between which the token's id goes."""
    if token is None:
        return [segments]
    chunks: list[list[Segment]] = [[]]
    for segment in segments:
        for position, piece in enumerate(segment.text.split(token)):
            if position:
                chunks.append([])
            if piece:
                chunks[-1].append(Segment(piece, segment.supervised))
    return chunks


def tokenize_segments(
    segments: list,
    tokenizer: Any,
    sample_id: str,
    template_name: str,
    prepend_bos: bool = False,
    max_length: int | None = None,
    boundary_token: str | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids and labels for rendered segments, with the tokenization-mismatch guard.

    boundary_token: a token (the image token) at which the text is cut; the pieces between are tokenized
    separately, as LLaVA's `tokenizer_image_token` does (a SentencePiece tokenizer then starts the text after
    an image with its prefix space, as LLaVA trained), and the token's own id is put between them, unsupervised.

    Each piece is tokenized once, in context (SentencePiece-style tokenizers add a prefix space at the start
    of a string, so segments tokenized alone would differ), with character offsets: a token belongs to the
    segment its last character lies in. A token whose characters start in an earlier segment spans a
    supervised/unsupervised boundary (e.g. a template whose answer starts after a space that BPE merges into
    the answer's first word); the labels would be misaligned, so this raises instead of training on a zero
    or shifted loss. A token's characters run from the previous token's end, so offsets trimmed of their
    leading space still count that space.

    max_length: only the first max_length ids are wanted (the caller truncates there). The text is then
    tokenized in growing prefixes cut at segment boundaries (doubling the segment count), stopping once
    max_length ids lie before the prefix's last segment, so the cost is linear in what is kept, not in
    the conversation's length. The result is then at most max_length long.
    """
    budget = None if max_length is None else max(max_length - int(prepend_bos), 0)
    boundary_id = None if boundary_token is None else tokenizer.convert_tokens_to_ids(boundary_token)
    input_ids: list[int] = []
    labels: list[int] = []
    for position, chunk in enumerate(split_at_token(segments, boundary_token)):
        if position:
            input_ids.append(boundary_id)
            labels.append(IGNORE_INDEX)
        remaining = None if budget is None else budget - len(input_ids)
        if remaining is not None and remaining <= 0:
            break
        if not chunk:
            continue
        if getattr(tokenizer, "is_fast", False):
            chunk_ids, chunk_labels = _tokenize_with_offsets(chunk, tokenizer, sample_id, template_name, remaining)
        else:
            chunk_ids, chunk_labels = _tokenize_by_prefixes(chunk, tokenizer, sample_id, template_name, False)
        input_ids += chunk_ids
        labels += chunk_labels
    if budget is not None:
        input_ids, labels = input_ids[:budget], labels[:budget]
    if prepend_bos:
        input_ids = [tokenizer.bos_token_id] + input_ids
        labels = [IGNORE_INDEX] + labels
    return input_ids, labels


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether `tokenizer(text)` starts with its BOS, as LLaVA gets it (Llama-2, Mistral, Llama-3; Qwen adds none)."""
    bos_id = tokenizer.bos_token_id
    return bos_id is not None and tokenizer("a")["input_ids"][:1] == [bos_id]


def tokenize_prompt(text: str, tokenizer: Any, image_token: str, prepend_bos: bool) -> list[int]:
    """The ids training gives `text` as an unsupervised span (a prompt), ONE image-token id per image: the
    pieces between image tokens tokenized separately, as LLaVA's `tokenizer_image_token` (`tokenize_segments`).
    Evaluation in LLaVA's style feeds a prompt with this, so a model is asked in the ids it trained on."""
    return tokenize_segments([Segment(text, False)], tokenizer, "prompt", "prompt", prepend_bos=prepend_bos,
                             boundary_token=image_token)[0]


def _mismatch(sample_id: str, template_name: str, segment: Segment) -> ValueError:
    return ValueError(
        f"tokenization mismatch in sample {sample_id!r} with template {template_name!r}: a token crosses the "
        f"boundary after {segment.text[-30:]!r}; the template does not fit this tokenizer"
    )


def _tokenize_with_offsets(segments: list, tokenizer: Any, sample_id: str, template_name: str,
                           budget: int | None) -> tuple[list[int], list[int]]:
    """One piece of tokenize_segments with a fast tokenizer's character offsets (see there)."""
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
            raise _mismatch(sample_id, template_name, segments[first])
        labels.append(token if segments[min(last, count - 1)].supervised else IGNORE_INDEX)
        previous_end = max(previous_end, end)
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
            raise _mismatch(sample_id, template_name, segment)
        new_ids = prefix_ids[len(labels):]
        labels += new_ids if segment.supervised else [IGNORE_INDEX] * len(new_ids)
    if prepend_bos:
        input_ids = [tokenizer.bos_token_id] + input_ids
        labels = [IGNORE_INDEX] + labels
    return input_ids, labels


@dataclass
class LengthSummary:
    """What the length pre-pass found (printed as one line; kept in trainer_state.json)."""

    rows: int
    with_image: int
    model_max_length: int
    long_rows: str
    over_length: int = 0
    longest: int = 0
    longest_exact: bool = True  # False: `longest` is an upper bound (anyres image sizes left unread)
    skipped: int = 0  # over-length rows left out (skip, or truncate_text that would cut an image / every answer)
    truncated: int = 0  # over-length rows kept with their text cut (truncate_text)
    skipped_ids: list[str] = field(default_factory=list)  # the first few

    def line(self, source: str) -> str:
        longest = f"{self.longest}" if self.longest_exact else f"<= {self.longest}"
        kept = self.rows - self.skipped
        action = {"skip": f"{self.skipped} skipped", "error": "refused",
                  "truncate_text": f"{self.truncated} truncated, {self.skipped} skipped"}[self.long_rows]
        return (f"{source}: {self.rows} rows ({self.with_image} with an image), longest {longest} tokens, "
                f"{self.over_length} over model_max_length {self.model_max_length} (long_rows={self.long_rows}: "
                f"{action}); {kept} rows train")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _RowPlan:
    """A row as the pre-pass found it: its position in the file, id, conversations, image path, text length."""

    index: int
    row_id: str
    conversations: list[dict[str, Any]]
    image: Path | None
    text_tokens: int = 0
    text_tokens_exact: bool = True
    image_tokens: int = 0
    image_tokens_exact: bool = True
    truncate: bool = False

    @property
    def length(self) -> int:
        return self.text_tokens + self.image_tokens

    @property
    def exact(self) -> bool:
        return self.text_tokens_exact and self.image_tokens_exact


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
    label_masking: 'answers' (ours) or 'llava_next' (LLaVA-NeXT's preprocess_qwen / preprocess_llama3).
    long_rows: what the length pre-pass does with rows longer than model_max_length: 'skip' (default),
        'error', or 'truncate_text' (keep the first model_max_length tokens when that cuts no image and keeps
        an answer token; else skip). `length_summary` says what it did.
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
        long_rows: str = "skip",
    ) -> None:
        if image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(f"unknown image_aspect_ratio {image_aspect_ratio!r}; valid: {', '.join(IMAGE_ASPECT_RATIOS)}")
        if label_masking not in LABEL_MASKINGS:
            raise ValueError(f"unknown label_masking {label_masking!r}; valid: {', '.join(LABEL_MASKINGS)}")
        if long_rows not in LONG_ROWS:
            raise ValueError(f"unknown long_rows {long_rows!r}; valid: {', '.join(LONG_ROWS)}")
        self.architecture = architecture_of(processor)
        if image_aspect_ratio not in self.architecture.processor_aspect_ratios:
            raise ValueError(
                f"image_aspect_ratio {image_aspect_ratio!r}: a {type(processor).__name__} prepares "
                f"{'/'.join(self.architecture.processor_aspect_ratios)} images"
            )
        self.data_path = Path(data_path)
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.template = get_template(template) if isinstance(template, str) else template
        if label_masking == "llava_next":
            self.template = published_masking(self.template)
        self.always_supervised = supervised_token_ids(self.template, processor.tokenizer)
        self.model_max_length = int(model_max_length)
        self.image_aspect_ratio = image_aspect_ratio
        self.long_rows = long_rows
        self.image_token = processor.image_token
        self.image_token_id = processor.image_token_id
        if self.image_token_id is None or self.tokenizer.convert_ids_to_tokens(self.image_token_id) != self.image_token:
            raise ValueError(f"the processor's tokenizer has no {self.image_token!r} token; add it as a special token first")
        fields = self.architecture.processor_count_fields
        if any(getattr(processor, field, None) is None for field in fields):
            raise ValueError(f"{' and '.join(f'processor.{field}' for field in fields)} must be set (they fix the image token count)")
        self.prepend_bos = bool(self.template.prefix_bos and tokenizer_adds_bos(self.tokenizer))
        self.plans, self.length_summary = self._length_pre_pass(load_rows(self.data_path))
        if int(os.environ.get("RANK", "0")) == 0:
            print(self.length_summary.line(str(self.data_path)), flush=True)

    def __len__(self) -> int:
        return len(self.plans)

    @property
    def modality_lengths(self) -> list[int]:
        """LLaVA's cheap length proxy (words in the conversation): positive with an image, negative without."""
        lengths = []
        for plan in self.plans:
            words = sum(len(str(turn.get("value", "")).split()) for turn in plan.conversations if isinstance(turn, dict))
            lengths.append(max(words, 1) if plan.image is not None else -max(words, 1))
        return lengths

    @property
    def lengths(self) -> list[int]:
        """Exact token length of every kept row (text + image tokens), measuring the rows the pre-pass only bounded."""
        self._resolve(self.plans)
        return [plan.length for plan in self.plans]

    # -- images ---------------------------------------------------------------------------------------
    def _image_path(self, row_id: str, relative: Any) -> Path:
        if isinstance(relative, list):
            if len(relative) != 1:
                raise ValueError(f"sample {row_id!r}: {len(relative)} images; only single-image samples are supported")
            relative = relative[0]
        if not isinstance(relative, str):
            raise ValueError(f"sample {row_id!r}: 'image' must be a path string, got {type(relative).__name__}")
        return (self.image_folder / relative) if self.image_folder is not None else Path(relative)

    def _preprocess_image(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """(pixel_values [tiles, 3, H, W], image_sizes [2] or None, number of image tokens): the architecture's rule."""
        pixel_values, image_sizes, num_tokens = self.architecture.prepare_image(self.processor, image, self.image_aspect_ratio)
        return pixel_values.float(), image_sizes, num_tokens

    def _image_tokens_of(self, path: Path, row_id: str) -> int:
        width, height = image_size(path, owner=f"sample {row_id!r}")
        return self.architecture.num_image_tokens(self.processor, height, width, self.image_aspect_ratio)

    def _image_token_bound(self) -> tuple[int, bool]:
        """(image tokens an image can take at most, whether every image takes exactly that)."""
        return self.architecture.max_image_tokens(self.processor, self.image_aspect_ratio)

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
        count = sum(str(m["value"]).count(IMAGE_PLACEHOLDER) for m in with_placeholder)
        if count > 1:
            # LLaVA-1.5 would collapse them into one, LLaVA-NeXT keep all for one image: both train on a wrong row.
            raise ValueError(f"sample {row_id!r}: {IMAGE_PLACEHOLDER} appears {count} times for one image; expected once")
        if with_placeholder and with_placeholder[0].get("from") not in ("human", "user"):
            raise ValueError(f"sample {row_id!r}: {IMAGE_PLACEHOLDER} is in a {with_placeholder[0].get('from')!r} turn; "
                             "it belongs in a human turn")
        # A row with an image but no placeholder gets one in its first human message (LLaVA would drop the image).
        target = with_placeholder[0] if with_placeholder else next(
            (m for m in messages if isinstance(m, dict) and m.get("from") in ("human", "user")), None
        )
        if target is None:
            raise ValueError(f"sample {row_id!r}: no human message to attach the image to")
        value = str(target["value"]) if with_placeholder else IMAGE_PLACEHOLDER + "\n" + str(target["value"])
        target["value"] = place_image(value, self.template.image_placement)
        return messages

    def _segments(self, row_id: str, conversations: list[dict[str, Any]], max_length: int | None) -> list[Segment]:
        try:
            segments = self.template.render(conversations, tokenizer=self.tokenizer, max_length=max_length)
        except ValueError as error:
            raise ValueError(f"sample {row_id!r}: {error}") from None
        # The placeholder becomes the processor's image token (one id), expanded later as LLaVA's
        # tokenizer_image_token does.
        return [Segment(s.text.replace(IMAGE_PLACEHOLDER, self.image_token), s.supervised) for s in segments]

    def encode_text(self, plan: _RowPlan, max_length: int | None = None) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of a row with ONE image token per image; max_length: only that many wanted."""
        conversations = plan.conversations
        if max_length is not None:
            # Every round renders to at least one token, so rounds past max_length + 2 cannot reach the
            # kept tokens (one spare round keeps the cut away from them): they are neither rendered nor tokenized.
            conversations = conversations[: 2 * (max_length + 2)]
        segments = self._segments(plan.row_id, conversations, max_length)
        input_ids, labels = tokenize_segments(
            segments, self.tokenizer, plan.row_id, self.template.name, prepend_bos=self.prepend_bos,
            max_length=max_length, boundary_token=self.image_token,
        )
        if self.always_supervised:  # LLaVA-NeXT's published labels: structural tokens supervised in every turn
            labels = [token if token in self.always_supervised else label for token, label in zip(input_ids, labels)]
        return input_ids, labels

    def encode_row(self, row: dict[str, Any], index: int = 0) -> tuple[list[int], list[int]]:
        """The input_ids and labels this dataset trains on for `row`, with ONE image token per image (no image
        is read): what LLaVA's preprocess functions return, image token for IMAGE_TOKEN_INDEX."""
        plan, _ = self._plan_row(index, row)
        return self.encode_text(plan)

    # -- the length pre-pass ----------------------------------------------------------------------------
    def _plan_row(self, index: int, row: Any) -> tuple[_RowPlan, list[str]]:
        """A row's plan and its text pieces (between image tokens), checked; one-line errors naming it."""
        if not isinstance(row, dict):
            raise ValueError(f"row {index}: expected an object, got {type(row).__name__}")
        row_id = str(row.get("id", f"#{index}"))
        has_image = bool(row.get("image"))
        image = self._image_path(row_id, row["image"]) if has_image else None
        plan = _RowPlan(index, row_id, self._conversations(row_id, row, has_image), image)
        return plan, self._pieces(plan)

    def _pieces(self, plan: _RowPlan) -> list[str]:
        """The rendered text of a row cut at its image token: the pieces tokenize_segments tokenizes one by one."""
        try:
            text, supervised = self.template.render_text(plan.conversations, tokenizer=self.tokenizer)
        except ValueError as error:
            raise ValueError(f"sample {plan.row_id!r}: {error}") from None
        if not supervised:
            raise ValueError(f"sample {plan.row_id!r}: no supervised (assistant) token; the row has no gpt answer")
        return text.replace(IMAGE_PLACEHOLDER, self.image_token).split(self.image_token)

    def _byte_bound_holds(self) -> bool:
        """Whether `tokens <= UTF-8 bytes + 1 per piece` holds for this tokenizer: every token covers at least one
        byte of the text (byte-level BPE, SentencePiece with byte fallback), except a `▁` prefix at the start of
        a piece or after a special token, which the special token's own >= 2 bytes pay for. A normalizer that
        can lengthen the text (NFKC, NFD, ...) voids it; only none and NFC are trusted."""
        from tokenizers import normalizers

        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return False
        specials = [token for token in self.tokenizer.get_added_vocab() if len(token.encode("utf-8")) < 2]
        return not specials and (backend.normalizer is None or isinstance(backend.normalizer, normalizers.NFC))

    def _length_pre_pass(self, rows: list[Any]) -> tuple[list[_RowPlan], LengthSummary]:
        plans, to_count = [], []
        bounded = self._byte_bound_holds()
        image_bound, image_exact = self._image_token_bound()
        for index, row in enumerate(rows):
            plan, pieces = self._plan_row(index, row)
            plans.append(plan)
            if plan.image is not None:
                plan.image_tokens, plan.image_tokens_exact = image_bound, image_exact
            if bounded:  # an upper bound; the text is tokenized only where the bound could reach model_max_length
                plan.text_tokens = int(self.prepend_bos) + sum(len(p.encode("utf-8")) + 1 for p in pieces if p)
                plan.text_tokens_exact = False
            if not bounded or plan.length > self.model_max_length:
                to_count.append((plan, pieces))
        self._count_text(to_count)
        missing = [plan for plan in plans if plan.image is not None and not plan.image.is_file()]
        if missing:
            raise FileNotFoundError(f"sample {missing[0].row_id!r}: image not found: {missing[0].image} "
                                    f"({len(missing)} of {len(plans)} rows miss their image file)")
        # Exact anyres counts (image headers) only where the bounds say a row could be too long.
        self._resolve_image_tokens([p for p in plans if p.length > self.model_max_length and not p.image_tokens_exact])
        summary = LengthSummary(rows=len(plans), with_image=sum(p.image is not None for p in plans),
                                model_max_length=self.model_max_length, long_rows=self.long_rows)
        summary.longest, summary.longest_exact = self._longest(plans)
        over = [plan for plan in plans if plan.length > self.model_max_length]
        summary.over_length = len(over)
        if over and self.long_rows == "error":
            longest = max(over, key=lambda p: p.length)
            raise ValueError(
                f"{self.data_path}: {len(over)} rows are longer than model_max_length {self.model_max_length} "
                f"(longest: sample {longest.row_id!r}, {longest.length} tokens); set long_rows to skip or "
                "truncate_text, or raise model_max_length"
            )
        dropped = set()
        for plan in over:
            if self.long_rows == "truncate_text" and self._can_truncate(plan):
                plan.truncate = True
                summary.truncated += 1
            else:
                dropped.add(plan.index)
        summary.skipped = len(dropped)
        if plans and len(dropped) == len(plans):
            raise ValueError(f"{self.data_path}: all {len(plans)} rows are longer than model_max_length "
                             f"{self.model_max_length} (long_rows={self.long_rows}); raise model_max_length")
        summary.skipped_ids = [plan.row_id for plan in over if plan.index in dropped][:10]
        return [plan for plan in plans if plan.index not in dropped], summary

    def _count_text(self, rows: list[tuple[_RowPlan, list[str]]]) -> None:
        """Exact text positions of rows (BOS + the pieces' tokens; each image token's own position is counted in
        image_tokens), all pieces tokenized in one batched call (the tokenizer's own threads)."""
        flat = [(row, piece) for row, (_, pieces) in enumerate(rows) for piece in pieces if piece]
        # verbose=False: measuring over-long rows is the point, transformers' "longer than the maximum" is noise here.
        encoded = self.tokenizer([piece for _, piece in flat], add_special_tokens=False, verbose=False)["input_ids"] if flat else []
        counts = [int(self.prepend_bos)] * len(rows)
        for (row, _), ids in zip(flat, encoded):
            counts[row] += len(ids)
        for (plan, _), count in zip(rows, counts):
            plan.text_tokens, plan.text_tokens_exact = count, True

    def _resolve_text(self, plans: list[_RowPlan]) -> None:
        self._count_text([(plan, self._pieces(plan)) for plan in plans])

    def _resolve_image_tokens(self, plans: list[_RowPlan]) -> None:
        if not plans:
            return
        with ThreadPoolExecutor(max_workers=8) as pool:  # header reads: I/O bound
            counts = list(pool.map(lambda plan: self._image_tokens_of(plan.image, plan.row_id), plans))
        for plan, count in zip(plans, counts):
            plan.image_tokens, plan.image_tokens_exact = count, True

    def _resolve(self, plans: list[_RowPlan]) -> None:
        self._resolve_text([p for p in plans if not p.text_tokens_exact])
        self._resolve_image_tokens([p for p in plans if not p.image_tokens_exact])

    def _longest(self, plans: list[_RowPlan], rounds: int = 16) -> tuple[int, bool]:
        """The longest row's length: the rows an upper bound could make the longest are measured, a batch at a time."""
        if not plans:
            return 0, True
        for _ in range(rounds):
            candidates = sorted(plans, key=lambda p: p.length, reverse=True)[:64]
            longest_exact = max((p.length for p in plans if p.exact), default=-1)
            unsure = [p for p in candidates if not p.exact and p.length > longest_exact]
            if not unsure:
                return max(p.length for p in plans), True
            self._resolve(unsure)
        longest = max(plans, key=lambda p: p.length)
        return longest.length, longest.exact

    def _can_truncate(self, plan: _RowPlan) -> bool:
        """truncate_text keeps a row whose first model_max_length tokens hold all its image tokens and an answer."""
        input_ids, labels = self.encode_text(plan, max_length=self.model_max_length)
        if plan.image is not None:
            if self.image_token_id not in input_ids:
                return False
            at = input_ids.index(self.image_token_id)
            if at + plan.image_tokens > self.model_max_length:
                return False
            labels = labels[: self.model_max_length - plan.image_tokens + 1]
        return any(label != IGNORE_INDEX for label in labels)

    # -- items ----------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        plan = self.plans[index]
        input_ids, labels = self.encode_text(plan, max_length=self.model_max_length if plan.truncate else None)
        pixel_values = image_sizes = None
        if plan.image is not None:
            image = load_image(plan.image, owner=f"sample {plan.row_id!r}")
            pixel_values, image_sizes, num_tokens = self._preprocess_image(image)
            at = input_ids.index(self.image_token_id)  # the pre-pass checked it is there, once
            input_ids = input_ids[:at] + [self.image_token_id] * num_tokens + input_ids[at + 1:]
            labels = labels[:at] + [IGNORE_INDEX] * num_tokens + labels[at + 1:]
        input_ids, labels = input_ids[: self.model_max_length], labels[: self.model_max_length]
        return dict(
            input_ids=torch.tensor(input_ids, dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.long),
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            id=plan.row_id,
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
    """Turns a list of dataset items into a LlavaNext / Llava ForConditionalGeneration batch, padded or packed.

    Padded (default): input_ids / labels / attention_mask [B, L] (pad id, -100, 0 on padding).
    Packed (`packing=True`, padding-free): the items are concatenated into one row, input_ids / labels /
    position_ids [1, sum of lengths] with no attention_mask, by transformers' DataCollatorWithFlattening:
    positions restart at 0 for every item and each item's first label is -100, so no label is predicted
    across an item boundary. Given position_ids and no attention_mask, transformers' attention turns the
    restarts into document masking (a block-diagonal causal mask for SDPA / eager / FlexAttention,
    variable-length kernels for flash-attention), so every item attends only to itself: the loss and the
    gradients equal the padded batch's, and no step computes a padding token. The batch carries
    use_cache=False: with a cache, transformers builds no packed-sequence mask.

    Images, in both modes: when any sample has an image, pixel_values [N, T, 3, H, W] (tiles zero-padded to
    the largest T; the model drops the padding using image_sizes) and image_sizes [N, 2], where N counts only
    the samples WITH an image, in batch order. The model scatters all image features, image after image, into
    the image-token positions of the whole batch, so text-only items contribute no image and no image token,
    and a packed row gets each image at its own placeholder. If every image in the batch is a single tile
    ('pad'/'square' data), pixel_values is [N, 3, H, W] (LlavaForConditionalGeneration). Batches without
    images have no pixel_values / image_sizes keys.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right", packing: bool = False) -> None:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; set tokenizer.pad_token")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.packing = packing
        self.flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)

    def _pad(self, sequences: list[torch.Tensor], value: int) -> torch.Tensor:
        longest = max(len(s) for s in sequences)
        out = torch.full((len(sequences), longest), value, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            if self.padding_side == "right":
                out[row, : len(sequence)] = sequence
            else:
                out[row, longest - len(sequence):] = sequence
        return out

    def _text(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.packing:
            batch = dict(self.flatten([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]))
            # With a KV cache transformers does not look for packed sequences (the LM's use_cache is on by
            # default, whatever the LLaVA config says): the samples would attend to each other.
            return {**batch, "use_cache": False}
        input_ids = self._pad([f["input_ids"] for f in features], self.pad_token_id)
        labels = self._pad([f["labels"] for f in features], IGNORE_INDEX)
        attention_mask = self._pad([torch.ones_like(f["input_ids"]) for f in features], 0)
        return dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._text(features)
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
