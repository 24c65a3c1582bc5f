"""Batched greedy answering of VQA benchmarks with a LlavaNext or Llava checkpoint (`reasonclip eval vqa`).

The answers file (`answers.py`) is a header with the run's identity, then LLaVA's answer rows, one JSON
object per line, in question order:
    {"question_id": ..., "prompt": ..., "text": ..., "model_id": ...}

Runs are resumable and data-parallel. Each process (one, or N under `torchrun --nproc-per-node N` /
`accelerate launch --num_processes N`) answers a deterministic shard (every N-th question from its rank)
into its own part file `OUT.part-RR-of-NN`, flushed after every batch; a rerun skips the ids already in OUT
or any part file and drops a half-written last line, so a kill -9 loses at most the batch in flight. When
every rank is done, rank 0 writes OUT atomically (all answers in question order) and removes the parts: N
processes give the file one process gives, item for item (tests/test_eval_distributed.py).

Batching is exact: prompts are left-padded and `generate` derives position ids from the attention
mask, so a batch gives the same greedy answers as one question at a time (tests/test_eval_generate.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jinja2 import TemplateError
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import BatchFeature

from ..images import load_image
from ..io_utils import atomic_write_text
from ..mllm_train.data import tokenize_prompt, tokenizer_adds_bos
from ..vlm.architectures import LlavaArchitecture, architecture_of
from .answers import (
    check_single_identity,
    data_fingerprint,
    describe_difference,
    header_line,
    identity_difference,
    model_fingerprint,
    parse_header,
)
from .settings import GenerationSettings

if TYPE_CHECKING:
    from transformers import LlavaNextForConditionalGeneration, ProcessorMixin

    from .benchmarks import VQAQuestion

PLAIN_TEMPLATE = "plain"
SPECIAL_TOKENS = ("once", "always")  # how a prompt becomes ids: LLaVA's eval scripts, lmms-eval's llava_hf


@dataclass(frozen=True)
class Launch:
    """This process's place in a data-parallel run (rank 0 of 1 when started alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    state: Any = None               # accelerate's PartialState when launched with several processes

    @classmethod
    def from_env(cls, device: str) -> Launch:
        """torchrun / accelerate launch set WORLD_SIZE; accelerate then joins the process group (gloo on CPU)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=not str(device).startswith("cuda"))
        return cls(state.process_index, state.num_processes, state.local_process_index, state)

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def device(self, device: str) -> str:
        # one GPU per process: a bare "cuda" becomes this process's own
        return f"cuda:{self.local_rank}" if self.world_size > 1 and device == "cuda" else device


def generate_answers(
    model_dir: str | Path,
    questions: Sequence[VQAQuestion],
    out_path: str | Path,
    *,
    batch_size: int = 8,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    conv_template: str | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    settings: GenerationSettings | None = None,
    identity: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Answer `questions` greedily with the LlavaNext / Llava checkpoint in `model_dir` into `out_path`.

    conv_template: None uses the processor's chat template, else the tokenizer's, else the plain prompt
    "<image>\\n{prompt}"; "plain" forces the plain prompt; any other string is a Jinja chat template
    (see `prompt_renderer`). dtype: None means float32 on CPU, bfloat16 (float16 where unsupported) on CUDA.
    device_map: "auto" (or a {module: device} mapping) spreads one model over the GPUs of this process
    (accelerate's dispatch); device then only says where the inputs start. settings: how to generate
    (`settings.py`; its max_new_tokens replaces each question's); None keeps each question's own limit
    with LLaVA's decoding. identity: what else names the run in the header (benchmark, data, prompts).
    overwrite: replace an answers file of another run instead of refusing it. Returns out_path.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_path = Path(out_path)
    _check_unique_ids(questions)
    if settings is None:
        settings = GenerationSettings(max(q.max_new_tokens for q in questions) if questions else 1,
                                      source="each question's max_new_tokens")
    else:
        questions = [replace(q, max_new_tokens=settings.max_new_tokens) for q in questions]
    launch = Launch.from_env(device)
    if device_map is not None and launch.world_size > 1:
        raise ValueError("--device-map spreads one model over the GPUs of one process; with several processes "
                         "each takes its own GPU (--device cuda)")
    run = {**(identity or {}), "model": str(Path(model_dir).resolve()), "model_id": model_name_from_path(model_dir),
           "model_files": model_fingerprint(model_dir) if Path(model_dir).is_dir() else None,
           "conv_template": _template_name(conv_template), "generation": settings.to_dict(),
           "dtype": str(_resolve_dtype(dtype, launch.device(device))).removeprefix("torch.")}
    if overwrite and launch.rank == 0:
        for path in (out_path, *_part_files(out_path)):
            path.unlink(missing_ok=True)
    launch.barrier()
    answered = _answered_ids(out_path, run)
    # every rank checks every image, so that a wrong --images folder stops all of them at once
    _check_images_exist([q for q in questions if str(q.question_id) not in answered])
    shard = list(questions)[launch.rank::launch.world_size]
    pending = [q for q in shard if str(q.question_id) not in answered]
    if pending:
        _answer_into(_part_path(out_path, launch), run, model_dir, pending, len(shard), launch, device, dtype, device_map,
                     batch_size, conv_template, num_workers, progress, settings)
    launch.barrier()
    if launch.rank == 0 and _part_files(out_path):
        merge_answers(out_path, questions, run)
    launch.barrier()
    return out_path


def _answer_into(part: Path, run: dict, model_dir, pending, shard_size, launch: Launch, device, dtype, device_map,
                 batch_size, conv_template, num_workers, progress, settings) -> None:
    model, processor = load_llava_next(model_dir, device="cpu" if device_map is not None else launch.device(device), dtype=dtype)
    if device_map is not None:
        model = _dispatch(model, device_map)
    part.parent.mkdir(parents=True, exist_ok=True)
    new = not part.exists() or part.stat().st_size == 0
    rank = f" [rank {launch.rank}/{launch.world_size}]" if launch.world_size > 1 else ""
    with open(part, "a", encoding="utf-8") as out, tqdm(
        total=shard_size, initial=shard_size - len(pending), unit="q", disable=not progress,
        desc=f"vqa {run['model_id']}{rank}", position=launch.rank,
    ) as bar:
        if new:
            out.write(header_line(run))
        for batch, texts in answer_questions(model, processor, pending, batch_size=batch_size, conv_template=conv_template,
                                             num_workers=num_workers, settings=settings):
            for question, text in zip(batch, texts):
                record = {"question_id": question.question_id, "prompt": question.prompt, "text": text,
                          "model_id": run["model_id"]}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()  # a crash loses at most the batch in flight
            bar.update(len(batch))


def run_vqa(
    model_dir: str | Path,
    benchmark: str,
    data: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    limit: int | None = None,
    prompts: str = "llava",
    max_new_tokens: int | None = None,
    **kwargs: Any,
) -> Path:
    """`reasonclip eval vqa`: load a benchmark's questions and answer them (see `generate_answers`).

    data: the original release files or the lmms-lab parquet folder (images are then written under
    `images`); prompts: "llava" or "lmms_eval" (the prompts, questions and generation settings of
    lmms-eval 0.7.3's task, `settings.py`). limit keeps the first `limit` questions (a quick smoke run);
    max_new_tokens overrides the benchmark's length; kwargs go to `generate_answers`.
    """
    from .benchmarks import canonical_benchmark, load_questions
    from .settings import generation_settings

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of questions, got {limit}")
    name = canonical_benchmark(benchmark)
    settings = generation_settings(name, prompts, max_new_tokens)
    questions = load_questions(name, data, images, prompts=prompts)
    if limit is not None:
        questions = questions[:limit]
    identity = {"benchmark": name, "data": str(Path(data).expanduser().resolve()), "data_files": data_fingerprint(data),
                "images": str(Path(images).expanduser().resolve()), "prompts": prompts}
    return generate_answers(model_dir, questions, out, settings=settings, identity=identity, **kwargs)


def load_llava_next(
    model_dir: str | Path, *, device: str = "cpu", dtype: torch.dtype | str | None = None
) -> tuple[LlavaNextForConditionalGeneration, ProcessorMixin]:
    """The VLM (eval mode, on `device`) and its processor from a local checkpoint: a LLaVA architecture, else
    any family of vlm.families (PaliGemma, Idefics3, SmolVLM, Gemma 3, ...) with its own processor."""
    from ..vlm.architectures import load_llava, model_types
    from ..vlm.swap import load_vlm

    # Strict load: missing weights would be scored as random ones; the model_type picks the architecture.
    if _model_type(model_dir) in model_types():
        model, processor = load_llava(model_dir, dtype=_resolve_dtype(dtype, device))
    else:
        _, model, processor = load_vlm(model_dir, "model", dtype=_resolve_dtype(dtype, device))
        if processor is None:
            raise FileNotFoundError(f"model {model_dir}: no processor files (processor_config.json / preprocessor_config.json)")
    model = model.to(device).eval()
    if processor.tokenizer.pad_token is None:  # batches need a pad id; left-padded rows are masked anyway
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return model, processor


def _model_type(model_dir: str | Path) -> str | None:
    from ..vlm.families import checkpoint_types

    return checkpoint_types(model_dir)[0]


def answer_questions(
    model: LlavaNextForConditionalGeneration,
    processor: ProcessorMixin,
    questions: Sequence[VQAQuestion],
    *,
    batch_size: int = 8,
    conv_template: str | None = None,
    num_workers: int | None = None,
    settings: GenerationSettings | None = None,
) -> Iterator[tuple[list[VQAQuestion], list[str]]]:
    """Yield (batch, greedy answers) for consecutive batches: image questions first, then text-only.

    Inputs (image decoding, anyres tiling, tokenization) are built by `num_workers` DataLoader worker
    processes while the model generates, as LLaVA's own eval loader does. None picks
    min(4, CPU count - 1) on an accelerator and 0 (build them in this process) on a CPU, where the
    model's own threads already use the cores. settings: the decoding rules (None: LLaVA's); each
    question keeps its own max_new_tokens.
    """
    settings = settings or GenerationSettings(max((q.max_new_tokens for q in questions), default=1))
    batches = list(_batches(questions, batch_size))
    if num_workers is None:
        num_workers = 0 if model.device.type == "cpu" else min(4, (os.cpu_count() or 1) - 1)
    loader = DataLoader(_BatchInputs(processor, batches, conv_template, settings.special_tokens), batch_size=None,
                        num_workers=min(num_workers, len(batches)))
    for batch, inputs in zip(batches, loader):
        if isinstance(inputs, Exception):
            raise inputs
        yield batch, generate_batch(model, processor.tokenizer, inputs, [q.max_new_tokens for q in batch], settings)


class _BatchInputs(Dataset):
    """Item i is the model inputs of batch i (or the error building them, re-raised by the consumer
    so that the user sees its one-line message rather than a worker traceback)."""

    def __init__(self, processor: ProcessorMixin, batches: list[list[VQAQuestion]], conv_template: str | None,
                 special_tokens: str):
        self.processor, self.batches, self.conv_template, self.special_tokens = processor, batches, conv_template, special_tokens

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor] | Exception:
        try:
            return dict(prepare_inputs(self.processor, self.batches[index], conv_template=self.conv_template,
                                       special_tokens=self.special_tokens))
        except (OSError, ValueError) as err:
            return err


@torch.inference_mode()
def generate_batch(
    model: LlavaNextForConditionalGeneration,
    tokenizer: Any,
    inputs: Mapping[str, torch.Tensor],
    max_new_tokens: Sequence[int],
    settings: GenerationSettings | None = None,
) -> list[str]:
    """Greedy answers for left-padded `inputs`; row i keeps at most max_new_tokens[i] tokens."""
    settings = settings or GenerationSettings(max(max_new_tokens))
    inputs = {name: tensor.to(model.device) for name, tensor in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    eos = [tokenizer.eos_token_id] if settings.stop == "tokenizer" else _stop_token_ids(model, tokenizer)
    output = model.generate(
        **inputs,
        do_sample=False,
        num_beams=settings.num_beams,
        max_new_tokens=max(max_new_tokens),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=eos,
    )
    new_tokens = output[:, inputs["input_ids"].shape[1]:]
    # Greedy decoding is prefix-stable, so cutting at each question's own limit equals generating to it.
    texts = [tokenizer.decode(tokens[:limit], skip_special_tokens=True) for tokens, limit in zip(new_tokens, max_new_tokens)]
    return [text.strip() for text in texts] if settings.strip else texts


def prepare_inputs(
    processor: ProcessorMixin, questions: Sequence[VQAQuestion], *, conv_template: str | None = None,
    special_tokens: str = "once",
) -> BatchFeature:
    """Left-padded model inputs (input_ids, attention_mask, and pixel_values/image_sizes with images).

    special_tokens (`GenerationSettings.special_tokens`) names how each harness turns the prompt into ids:
    "once" (`--prompts llava`) as LLaVA's eval scripts and this package's training do (`llava_prompt_inputs`:
    the text on each side of the image tokenized separately, BOS left out where the chat template already
    starts with it); "always" (`--prompts lmms_eval`) as lmms-eval's llava_hf does: the processor on the whole
    prompt, the tokenizer's special tokens added. A processor of another VLM family than LLaVA's two takes
    the processor path in both (LLaVA's rule is LLaVA's)."""
    if special_tokens not in SPECIAL_TOKENS:
        raise ValueError(f"special_tokens must be one of {SPECIAL_TOKENS}, got {special_tokens!r}")
    has_image = {q.image is not None for q in questions}
    if len(has_image) != 1:
        raise ValueError("a batch must be all image questions or all text-only questions")
    tokenizer = processor.tokenizer
    render = prompt_renderer(processor, conv_template)
    prompts = [render(q.prompt, q.image is not None) for q in questions]
    images = [_open_image(q) for q in questions] if has_image.pop() else None
    # A template that already starts with BOS must not get a second one from the tokenizer.
    add_special_tokens = special_tokens == "always" or not (tokenizer.bos_token and prompts[0].startswith(tokenizer.bos_token))
    if special_tokens == "once" and _llava_architecture(processor) is not None:
        return llava_prompt_inputs(processor, prompts, images, add_special_tokens=add_special_tokens,
                                   owners=[f"question {q.question_id}" for q in questions])
    # Left padding: generation appends on the right, so the real tokens must end every row. Passed per
    # call rather than set on the tokenizer, which stays as it was.
    return processor(text=prompts, images=images, padding=True, padding_side="left", return_tensors="pt",
                     add_special_tokens=add_special_tokens)


def llava_prompt_inputs(
    processor: ProcessorMixin, prompts: Sequence[str], images: Sequence[Image.Image] | None = None, *,
    add_special_tokens: bool = True, owners: Sequence[str] | None = None,
) -> BatchFeature:
    """Left-padded inputs for prompts with the image placeholder (one per prompt when `images` are given), as
    LLaVA's eval scripts feed them (`tokenizer_image_token`) and as training tokenizes the same turn.

    The text on each side of the image is tokenized separately by training's own code
    (`mllm_train.data.tokenize_prompt`: a SentencePiece tokenizer then starts the text after the image with
    its `▁`, which tokenizing the whole prompt in context drops when `legacy=False`); BOS is prepended when
    `add_special_tokens` and the tokenizer adds one; the one image token is expanded to the count the model
    consumes for that image (the architecture's `num_image_tokens`, the processor's own rule); pixel inputs
    are the processor's. owners name the prompts in errors.
    """
    architecture = _llava_architecture(processor)
    if architecture is None:
        raise ValueError(f"{type(processor).__name__} is not a LLaVA processor; its prompts go through the processor")
    tokenizer, image_token_id = processor.tokenizer, processor.image_token_id
    if images is not None and len(images) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts for {len(images)} images; expected one image per prompt")
    prepend_bos = add_special_tokens and tokenizer_adds_bos(tokenizer)
    expected = 0 if images is None else 1
    rows = []
    for position, prompt in enumerate(prompts):
        ids = tokenize_prompt(prompt, tokenizer, processor.image_token, prepend_bos)
        found = ids.count(image_token_id)
        if found != expected:
            owner = owners[position] if owners else f"prompt {position}"
            raise ValueError(f"{owner}: the prompt holds {found} {processor.image_token} tokens for {expected} image(s)")
        if images is not None:
            at = ids.index(image_token_id)
            # The architecture's serving rule: anyres for LLaVA-NeXT; LLaVA-1.5's one tile counts the same whatever the aspect.
            count = architecture.num_image_tokens(processor, images[position].height, images[position].width,
                                                  architecture.image_aspect_ratios[0])
            ids = ids[:at] + [image_token_id] * count + ids[at + 1:]
        rows.append(ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max((len(ids) for ids in rows), default=0)
    # Left padding: generation appends on the right, so the real tokens must end every row.
    features: dict[str, Any] = {
        "input_ids": torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in rows], dtype=torch.long),
        "attention_mask": torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], dtype=torch.long),
    }
    if images is not None:
        features.update(processor(images=list(images), return_tensors="pt"))  # the processor's own pixel inputs
    return BatchFeature(features)


def _llava_architecture(processor: ProcessorMixin) -> LlavaArchitecture | None:
    try:
        return architecture_of(processor)
    except ValueError:
        return None


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
    """Question ids already in an answers (or part) file; repairs a half-written last line left by a crash.

    Only the last line can be cut by a crash: it is dropped (or completed with its newline if it
    parses) and the file is rewritten. A bad line anywhere else is an error and the file is left as is.
    """
    return set(_read_rows(Path(out_path), repair=True)[1])


def _read_rows(path: Path, repair: bool = False) -> tuple[list[dict], dict[str, dict]]:
    """(header identities, question_id -> row) of an answers or part file."""
    if not path.exists():
        return [], {}
    lines = path.read_bytes().split(b"\n")
    needs_repair = lines[-1] != b""  # no trailing newline: the last write did not finish
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    kept: list[bytes] = []
    headers: list[dict] = []
    rows: dict[str, dict] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        header = parse_header(line)
        row = None if header is not None else _answer_row(line)
        if header is None and row is None:
            if i != last or not repair:
                raise ValueError(f"{path}:{i + 1}: not a JSON answer with a question_id; fix or move the file")
            needs_repair = True
            continue
        kept.append(line)
        if header is not None:
            headers.append(header)
        else:
            rows[str(row["question_id"])] = row
    if needs_repair and repair:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"".join(line + b"\n" for line in kept))
        os.replace(tmp, path)
    return headers, rows


def _answered_ids(out_path: Path, run: dict) -> set[str]:
    """Ids answered by this run in OUT and every part file; a file of another run is refused."""
    answered: set[str] = set()
    for path in (out_path, *_part_files(out_path)):
        headers, rows = _read_rows(path, repair=path != out_path)
        if not headers and not rows:
            continue
        if not headers:
            raise ValueError(f"{path} has answers but no header (another tool's or an older run's file); "
                             f"move it or pass --overwrite")
        identity = check_single_identity(path, headers, {str(r.get("model_id")) for r in rows.values() if "model_id" in r})
        fields = identity_difference(run, identity)
        if fields:
            raise ValueError(f"{path} holds the answers of another run ({describe_difference(run, identity, fields)}); "
                             f"use another --out or pass --overwrite to replace it")
        answered |= set(rows)
    return answered


def merge_answers(out_path: Path, questions: Sequence[VQAQuestion], run: dict) -> Path:
    """Write OUT atomically from OUT and the part files, in question order, then remove the parts."""
    parts = _part_files(out_path)
    rows: dict[str, dict] = {}
    for path in (out_path, *parts):
        for qid, row in _read_rows(path)[1].items():
            rows.setdefault(qid, row)
    order = {str(q.question_id): n for n, q in enumerate(questions)}
    ordered = sorted(rows.values(), key=lambda row: order.get(str(row["question_id"]), len(order)))
    atomic_write_text(out_path, header_line(run) + "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ordered))
    for path in parts:
        path.unlink()
    return out_path


def _part_path(out_path: Path, launch: Launch) -> Path:
    return out_path.with_name(f"{out_path.name}.part-{launch.rank:02d}-of-{launch.world_size:02d}")


def _part_files(out_path: Path) -> list[Path]:
    return sorted(out_path.parent.glob(f"{out_path.name}.part-*-of-*")) if out_path.parent.is_dir() else []


def _answer_row(line: bytes) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return row if isinstance(row, dict) and "question_id" in row else None


def _template_name(conv_template: str | None) -> str | None:
    if conv_template is None or conv_template == PLAIN_TEMPLATE:
        return conv_template
    import hashlib

    return "sha256:" + hashlib.sha256(conv_template.encode()).hexdigest()[:16]


def _dispatch(model: Any, device_map: str | dict) -> Any:
    """One model over the devices of this process (accelerate's big-model dispatch)."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if isinstance(device_map, str):
        if device_map != "auto":
            raise ValueError(f"device_map must be 'auto' or a {{module: device}} mapping, got {device_map!r}")
        no_split = getattr(model, "_no_split_modules", None) or []
        device_map = infer_auto_device_map(model, max_memory=get_balanced_memory(model, no_split_module_classes=no_split),
                                           no_split_module_classes=no_split)
    return dispatch_model(model, device_map=device_map)


def model_name_from_path(model_dir: str | Path) -> str:
    """LLaVA's model id: the folder name, prefixed by its parent for `checkpoint-N` folders."""
    parts = Path(model_dir).resolve().parts
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


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
