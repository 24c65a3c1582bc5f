"""Batched greedy answering of VQA benchmarks with a LlavaNext or Llava checkpoint (`reasonclip eval vqa`).

Answers are written in LLaVA's answer-file format, one JSON object per line:
    {"question_id": ..., "prompt": ..., "text": ..., "model_id": ...}
The file is flushed after every batch and the run is resumable: ids already in the file are skipped
and a half-written last line left by a crash is dropped, so a rerun neither loses nor repeats answers.

Batching is exact: prompts are left-padded and `generate` derives position ids from the attention
mask, so a batch gives the same greedy answers as one question at a time (tests/test_eval_generate.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jinja2 import TemplateError
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..images import load_image

if TYPE_CHECKING:
    from transformers import BatchFeature, LlavaNextForConditionalGeneration, ProcessorMixin

    from .benchmarks import VQAQuestion

PLAIN_TEMPLATE = "plain"


def generate_answers(
    model_dir: str | Path,
    questions: Sequence[VQAQuestion],
    out_path: str | Path,
    *,
    batch_size: int = 8,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    conv_template: str | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Answer `questions` greedily with the LlavaNext checkpoint in `model_dir`; append to `out_path`.

    conv_template: None uses the processor's chat template, else the tokenizer's, else the plain prompt
    "<image>\\n{prompt}"; "plain" forces the plain prompt; any other string is a Jinja chat template
    (see `prompt_renderer`). dtype: None means float32 on CPU, bfloat16 (float16 where unsupported) on CUDA.
    Questions are answered in batches of image questions, then of text-only ones; num_workers: see
    `answer_questions`. Returns out_path.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_path = Path(out_path)
    _check_unique_ids(questions)
    answered = read_answered_ids(out_path)
    pending = [q for q in questions if str(q.question_id) not in answered]
    _check_images_exist(pending)
    if not pending:
        return out_path

    model, processor = load_llava_next(model_dir, device=device, dtype=dtype)
    model_id = model_name_from_path(model_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "a", encoding="utf-8") as out, tqdm(
        total=len(questions), initial=len(questions) - len(pending), unit="q", disable=not progress,
        desc=f"vqa {model_id}",
    ) as bar:
        for batch, texts in answer_questions(model, processor, pending, batch_size=batch_size,
                                             conv_template=conv_template, num_workers=num_workers):
            for question, text in zip(batch, texts):
                record = {"question_id": question.question_id, "prompt": question.prompt, "text": text,
                          "model_id": model_id}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()  # a crash loses at most the batch in flight
            bar.update(len(batch))
    return out_path


def run_vqa(
    model_dir: str | Path,
    benchmark: str,
    data: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    limit: int | None = None,
    prompts: str = "llava",
    **kwargs: Any,
) -> Path:
    """`reasonclip eval vqa`: load a benchmark's questions and answer them (see `generate_answers`).

    data: the original release files or the lmms-lab parquet folder (images are then written under
    `images`); prompts: "llava" or "lmms_eval". limit keeps the first `limit` questions (a quick smoke
    run); kwargs go to `generate_answers`.
    """
    from .benchmarks import load_questions

    questions = load_questions(benchmark, data, images, prompts=prompts)
    if limit is not None:
        questions = questions[:limit]
    return generate_answers(model_dir, questions, out, **kwargs)


def load_llava_next(
    model_dir: str | Path, *, device: str = "cpu", dtype: torch.dtype | str | None = None
) -> tuple[LlavaNextForConditionalGeneration, ProcessorMixin]:
    """The LlavaNext or Llava model (eval mode, on `device`) and its processor from a local checkpoint."""
    from ..vlm.architectures import load_llava

    # Strict load: missing weights would be scored as random ones; the model_type picks the architecture.
    model, processor = load_llava(model_dir, dtype=_resolve_dtype(dtype, device))
    model = model.to(device).eval()
    if processor.tokenizer.pad_token is None:  # batches need a pad id; left-padded rows are masked anyway
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return model, processor


def answer_questions(
    model: LlavaNextForConditionalGeneration,
    processor: ProcessorMixin,
    questions: Sequence[VQAQuestion],
    *,
    batch_size: int = 8,
    conv_template: str | None = None,
    num_workers: int | None = None,
) -> Iterator[tuple[list[VQAQuestion], list[str]]]:
    """Yield (batch, greedy answers) for consecutive batches: image questions first, then text-only.

    Inputs (image decoding, anyres tiling, tokenization) are built by `num_workers` DataLoader worker
    processes while the model generates, as LLaVA's own eval loader does. None picks
    min(4, CPU count - 1) on an accelerator and 0 (build them in this process) on a CPU, where the
    model's own threads already use the cores.
    """
    batches = list(_batches(questions, batch_size))
    if num_workers is None:
        num_workers = 0 if model.device.type == "cpu" else min(4, (os.cpu_count() or 1) - 1)
    loader = DataLoader(_BatchInputs(processor, batches, conv_template), batch_size=None,
                        num_workers=min(num_workers, len(batches)))
    for batch, inputs in zip(batches, loader):
        if isinstance(inputs, Exception):
            raise inputs
        yield batch, generate_batch(model, processor.tokenizer, inputs, [q.max_new_tokens for q in batch])


class _BatchInputs(Dataset):
    """Item i is the model inputs of batch i (or the error building them, re-raised by the consumer
    so that the user sees its one-line message rather than a worker traceback)."""

    def __init__(self, processor: ProcessorMixin, batches: list[list[VQAQuestion]], conv_template: str | None):
        self.processor, self.batches, self.conv_template = processor, batches, conv_template

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor] | Exception:
        try:
            return dict(prepare_inputs(self.processor, self.batches[index], conv_template=self.conv_template))
        except (OSError, ValueError) as err:
            return err


@torch.inference_mode()
def generate_batch(
    model: LlavaNextForConditionalGeneration,
    tokenizer: Any,
    inputs: Mapping[str, torch.Tensor],
    max_new_tokens: Sequence[int],
) -> list[str]:
    """Greedy answers for left-padded `inputs`; row i keeps at most max_new_tokens[i] tokens."""
    inputs = {name: tensor.to(model.device) for name, tensor in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    output = model.generate(
        **inputs,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max(max_new_tokens),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=_stop_token_ids(model, tokenizer),
    )
    new_tokens = output[:, inputs["input_ids"].shape[1]:]
    # Greedy decoding is prefix-stable, so cutting at each question's own limit equals generating to it.
    return [tokenizer.decode(tokens[:limit], skip_special_tokens=True).strip()
            for tokens, limit in zip(new_tokens, max_new_tokens)]


def prepare_inputs(
    processor: ProcessorMixin, questions: Sequence[VQAQuestion], *, conv_template: str | None = None
) -> BatchFeature:
    """Left-padded model inputs (input_ids, attention_mask, and pixel_values/image_sizes with images)."""
    has_image = {q.image is not None for q in questions}
    if len(has_image) != 1:
        raise ValueError("a batch must be all image questions or all text-only questions")
    tokenizer = processor.tokenizer
    render = prompt_renderer(processor, conv_template)
    prompts = [render(q.prompt, q.image is not None) for q in questions]
    images = [_open_image(q) for q in questions] if has_image.pop() else None
    # A template that already starts with BOS must not get a second one from the tokenizer.
    add_special_tokens = not (tokenizer.bos_token and prompts[0].startswith(tokenizer.bos_token))
    # Left padding: generation appends on the right, so the real tokens must end every row. Passed per
    # call rather than set on the tokenizer, which stays as it was.
    return processor(text=prompts, images=images, padding=True, padding_side="left", return_tensors="pt",
                     add_special_tokens=add_special_tokens)


def build_prompt(processor: ProcessorMixin, prompt: str, has_image: bool, conv_template: str | None = None) -> str:
    """The model's input text for one question (with the "<image>" placeholder when it has an image)."""
    return prompt_renderer(processor, conv_template)(prompt, has_image)


def prompt_renderer(processor: ProcessorMixin, conv_template: str | None = None) -> Callable[[str, bool], str]:
    """A function (prompt, has_image) -> model input text, with the chat template chosen once.

    The template is conv_template, else the processor's, else the tokenizer's; "plain" or no template
    gives "<image>\\n{prompt}". A multimodal template takes content items (image, then text); a text-LM
    template (what LLaVA-trained checkpoints save) takes a string, so it gets "<image>\\n{prompt}" as
    the user message, like LLaVA's training data.
    """
    image_token = getattr(processor, "image_token", "<image>")

    def plain(prompt: str, has_image: bool) -> str:
        return f"{image_token}\n{prompt}" if has_image else prompt

    template = conv_template or getattr(processor, "chat_template", None) or processor.tokenizer.chat_template
    if conv_template == PLAIN_TEMPLATE or not template:
        return plain

    def with_content_items(prompt: str, has_image: bool) -> str:
        content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": prompt}]
        return processor.apply_chat_template([{"role": "user", "content": content}], chat_template=template,
                                             add_generation_prompt=True, tokenize=False)

    def with_string_content(prompt: str, has_image: bool) -> str:
        return processor.tokenizer.apply_chat_template([{"role": "user", "content": plain(prompt, has_image)}],
                                                       chat_template=template, add_generation_prompt=True,
                                                       tokenize=False)

    return with_content_items if _takes_content_items(processor, template) else with_string_content


def read_answered_ids(out_path: str | Path) -> set[str]:
    """Question ids already in an answers file; repairs a half-written last line left by a crash.

    Only the last line can be cut by a crash: it is dropped (or completed with its newline if it
    parses) and the file is rewritten. A bad line anywhere else is an error and the file is left as is.
    """
    out_path = Path(out_path)
    if not out_path.exists():
        return set()
    lines = out_path.read_bytes().split(b"\n")
    needs_repair = lines[-1] != b""  # no trailing newline: the last write did not finish
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    kept: list[bytes] = []
    answered: set[str] = set()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        qid = _question_id_of(line)
        if qid is None:
            if i != last:
                raise ValueError(f"{out_path}:{i + 1}: not a JSON answer with a question_id; fix or move the file")
            needs_repair = True
            continue
        kept.append(line)
        answered.add(qid)
    if needs_repair:
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_bytes(b"".join(line + b"\n" for line in kept))
        os.replace(tmp, out_path)
    return answered


def model_name_from_path(model_dir: str | Path) -> str:
    """LLaVA's model id: the folder name, prefixed by its parent for `checkpoint-N` folders."""
    parts = Path(model_dir).resolve().parts
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


def _question_id_of(line: bytes) -> str | None:
    try:
        record = json.loads(line)
        return str(record["question_id"])
    except (ValueError, KeyError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def _takes_content_items(processor: ProcessorMixin, template: str) -> bool:
    """Whether `template` renders an image content item as the image token (else it wants string content)."""
    probe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "probe"}]}]
    try:
        rendered = processor.apply_chat_template(probe, chat_template=template, add_generation_prompt=True,
                                                 tokenize=False)
    except (TypeError, ValueError, TemplateError):  # e.g. `content + "..."` on a list
        return False
    return getattr(processor, "image_token", "<image>") in rendered


def _batches(questions: Sequence[VQAQuestion], batch_size: int) -> Iterator[list[VQAQuestion]]:
    """Consecutive batches of image questions, then of text-only ones (a batch never mixes the two)."""
    for has_image in (True, False):
        group = [q for q in questions if (q.image is not None) == has_image]
        for start in range(0, len(group), batch_size):
            yield group[start:start + batch_size]


def _check_unique_ids(questions: Sequence[VQAQuestion]) -> None:
    seen: set[str] = set()
    for q in questions:
        if str(q.question_id) in seen:
            raise ValueError(f"duplicate question_id {q.question_id!r}: answers are keyed by id")
        seen.add(str(q.question_id))


def _check_images_exist(questions: Sequence[VQAQuestion]) -> None:
    # Checked before the model loads so that a wrong --images folder fails in a second, not mid-run.
    for q in questions:
        if q.image is not None and not Path(q.image).is_file():
            raise FileNotFoundError(f"question {q.question_id}: image file not found: {q.image}")


def _open_image(question: VQAQuestion) -> Image.Image:
    return load_image(question.image, owner=f"question {question.question_id}")


def _stop_token_ids(model: LlavaNextForConditionalGeneration, tokenizer: Any) -> list[int] | None:
    """The checkpoint's eos ids plus the tokenizer's (chat templates often end turns with their own eos)."""
    configured = model.generation_config.eos_token_id
    ids = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    ids.append(tokenizer.eos_token_id)
    unique = list(dict.fromkeys(i for i in ids if i is not None))
    return unique or None


def _resolve_dtype(dtype: torch.dtype | str | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        if not str(device).startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    resolved = getattr(torch, aliases.get(dtype, dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return resolved
