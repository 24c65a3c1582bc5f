"""VQA benchmarks read from their released files, with LLaVA's standard prompts.

`load_questions(name, data, images)` gives the questions to answer; `read_items(name, data)` gives the
same questions with their ground truth, which the scorers in `evaluation.scoring` use. Names are
case-insensitive ('-' and '_' are the same). What `data` and `images` point at:

| name          | data (released file or folder)                                     | images                         |
|---------------|--------------------------------------------------------------------|--------------------------------|
| vqav2         | v2_OpenEnded_mscoco_{val2014,test-dev2015,test2015}_questions.json | COCO val2014/ or test2015/     |
| gqa           | testdev_balanced_questions.json ({qid: {imageId, question, ..}})   | GQA images/                    |
| textvqa       | TextVQA_0.5.1_val.json ({"data": [...]})                           | train_images/                  |
| vizwiz        | VizWiz val.json / test.json (list of {image, question, answers})  | val/ or test/                  |
| pope          | coco_pope_{adversarial,popular,random}.json (JSONL), or their dir  | COCO val2014/                  |
| mme           | MME_Benchmark_release_version/ or its eval_tool/Your_Results/      | MME_Benchmark_release_version/ |
| scienceqa     | folder with problems.json + pid_splits.json (all test problems)    | ScienceQA images/test/         |
| scienceqa_img | same; only the test problems that have an image                   | ScienceQA images/test/         |
| mmbench       | MMBench TSV (index, question, hint, A-D, answer, category, image)  | cache dir for decoded images   |
| mmvp          | Questions.csv (Index, Question, Options, Correct Answer) or its dir | "MMVP Images/" (1.jpg..300.jpg)|
| ai2d          | AI2D release root (questions/*.json, optional ai2d_test_ids.csv)  | ai2d/images/                   |
| chartqa       | test_human.json / test_augmented.json, or the test/ dir with both  | ChartQA test/png/              |
| seedbench_img | SEED-Bench.json ({"questions": [...]}; data_type 'image' kept)     | SEED-Bench-image/              |

Layout choices (where a benchmark has several releases):
- MME: the released benchmark folder, one folder per subtask holding the images and one
  `question\\tanswer` txt per image (flat, or images/ + questions_answers_YN/), is read directly; the
  official eval_tool's Your_Results/{subtask}.txt (`image\\tquestion\\tanswer` lines, the file its
  calculation.py scores) is read too. Question ids are "{subtask}/{image}/{k}", k = 0, 1 for the two
  questions of an image, in file order.
- AI2D: the original AI2D release (questions/{image}.json with {question: {answerTexts,
  correctAnswer, questionId, abcLabel}}); when the root holds ai2d_test_ids.csv (the public test
  split, one image id a line), only those images are kept (3,088 questions).
- MMBench: circular evaluation. A TSV that already holds rotated rows (index >= 1e6) is used as is;
  otherwise every question is also asked with its options rotated k = 1..n-1 places (LLaVA's
  --all-rounds; id = index + k * 1e6, so the letter at position j shows original option (j + k) % n).
- TextVQA: LLaVA-NeXT / lmms-eval default, no OCR tokens. `textvqa_ocr=True` uses each row's
  ocr_tokens, a path reads them from a Rosetta OCR file (TextVQA_Rosetta_OCR_v0.2_val.json); the
  prompt then carries "Reference OCR token: a, b, c" as in LLaVA-1.5's llava_textvqa_val_v051_ocr.
- POPE and MME use LLaVA-1.5's prompts (llava_pope_test.jsonl, llava_mme.jsonl): the question plus
  "Answer the question using a single word or phrase."; POPE ids are "{split}/{question_id}".
- MMVP options "(a) x (b) y" become "A. x\\nB. y" as in lmms-eval, answers "(a)" -> "A".
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import math
import os
import re
import string
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPT_STYLES = ("llava", "lmms_eval")
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."
VIZWIZ_UNANSWERABLE_PROMPT = "When the provided information is insufficient, respond with 'Unanswerable'."
LETTERS = string.ascii_uppercase
CIRCULAR_OFFSET = 1_000_000  # MMBench: index k * 1e6 + i is rotation k of question i

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_SUBTASKS = MME_PERCEPTION + MME_COGNITION


@dataclass
class VQAQuestion:
    question_id: str            # stable id written to the answers file
    image: str | None           # absolute path of the image file (None for text-only questions)
    prompt: str                 # question + options + the benchmark's instruction, without <image>
    max_new_tokens: int = 16


@dataclass
class BenchmarkItem:
    """One question with its ground truth, as read from a benchmark's released files."""

    question_id: str
    image: str | None           # path relative to the images root (absolute for decoded MMBench images)
    prompt: str
    answer: Any = None          # ground truth in the benchmark's own form; None where the split has none
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReaderOptions:
    textvqa_ocr: bool | str | Path = False
    circular: bool = True
    image_cache: Path | None = None   # MMBench / lmms-lab parquet: where embedded images are written to
    prompts: str = "llava"            # "llava" (LLaVA's eval prompts) or "lmms_eval" (its task defaults)


Reader = Callable[[Path, ReaderOptions], list[BenchmarkItem]]


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    reader: Reader
    max_new_tokens: int = 16


# --------------------------------------------------------------------------------------------------
# Public API


def canonical_benchmark(name: str) -> str:
    """The registry name of a benchmark ('VQAv2', 'seed-bench-img', ... -> 'vqav2', 'seedbench_img')."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return key


def read_items(
    benchmark: str,
    data: str | Path,
    *,
    textvqa_ocr: bool | str | Path = False,
    circular: bool = True,
    image_cache: str | Path | None = None,
    prompts: str = "llava",
) -> list[BenchmarkItem]:
    """Every question of `benchmark` in `data` with its ground truth (see the module table).

    data: the original release files, or the lmms-lab parquet folder of the benchmark (lmms_lab.py).
    prompts: "llava" (default) or "lmms_eval" (lmms-eval's default prompts; parquet input only).
    """
    from .lmms_lab import LAYOUTS, is_parquet_input, read_lmms_lab

    spec = BENCHMARKS[canonical_benchmark(benchmark)]
    data = Path(data).expanduser()
    if not data.exists():
        raise FileNotFoundError(f"{spec.name}: data not found: {data}")
    if prompts not in PROMPT_STYLES:
        raise ValueError(f"prompts must be one of {PROMPT_STYLES}, got {prompts!r}")
    options = ReaderOptions(textvqa_ocr=textvqa_ocr, circular=circular,
                            image_cache=Path(image_cache).expanduser() if image_cache is not None else None,
                            prompts=prompts)
    if is_parquet_input(data):
        if spec.name not in LAYOUTS:
            raise ValueError(f"{spec.name}: no lmms-lab parquet layout is known; give the original release files")
        items = read_lmms_lab(spec.name, data, options)
    else:
        if prompts != "llava":
            raise ValueError(f"{spec.name}: lmms-eval prompts need the lmms-lab parquet input; {data} is the original release")
        try:
            items = spec.reader(data, options)
        except (FileNotFoundError, ValueError) as error:
            if not data.is_dir() or spec.name not in LAYOUTS:
                raise
            raise type(error)(f"{spec.name}: {data} is neither the original release ({ORIGINAL_LAYOUT[spec.name]}) "
                              f"nor the {LAYOUTS[spec.name].expected()}: {error}") from None
    if not items:
        raise ValueError(f"{spec.name}: no questions found in {data}")
    seen: set[str] = set()
    for item in items:
        if item.question_id in seen:
            raise ValueError(f"{spec.name}: duplicate question id {item.question_id!r} in {data}")
        seen.add(item.question_id)
    return items


def load_questions(
    benchmark: str,
    data: str | Path,
    images: str | Path,
    *,
    textvqa_ocr: bool | str | Path = False,
    circular: bool = True,
    check_images: bool = True,
    prompts: str = "llava",
) -> list[VQAQuestion]:
    """The questions of `benchmark` with absolute image paths and LLaVA's standard prompts.

    images: the folder the benchmark's image names are relative to (module table); for MMBench and the
    lmms-lab parquet input, the folder their embedded images are written to (created if missing,
    reused when already there).
    check_images: raise FileNotFoundError naming the first question whose image file is missing.
    """
    from .lmms_lab import is_parquet_input

    spec = BENCHMARKS[canonical_benchmark(benchmark)]
    images = Path(images).expanduser().resolve()
    embedded = spec.name == "mmbench" or is_parquet_input(Path(data).expanduser())  # images written to `images`
    items = read_items(spec.name, data, textvqa_ocr=textvqa_ocr, circular=circular,
                       image_cache=images if embedded else None, prompts=prompts)
    if check_images and not embedded and not images.is_dir():
        raise FileNotFoundError(f"{spec.name}: image folder not found: {images}")
    checked: dict[str, bool] = {}
    questions = []
    for item in items:
        path = None
        if item.image is not None:
            candidates = [item.image, *item.meta.get("alt_images", ())]
            path = str(images / candidates[0])
            if check_images:
                for candidate in candidates:
                    resolved = str(images / candidate)
                    if resolved not in checked:
                        checked[resolved] = Path(resolved).is_file()
                    if checked[resolved]:
                        path = resolved
                        break
                else:
                    raise FileNotFoundError(
                        f"{spec.name}: image of question {item.question_id} not found: {path}")
        questions.append(VQAQuestion(item.question_id, path, item.prompt, spec.max_new_tokens))
    return questions


# --------------------------------------------------------------------------------------------------
# Prompts


def short_answer_prompt(question: str, *extra_lines: str) -> str:
    return "\n".join([question.strip(), *extra_lines, SHORT_ANSWER_PROMPT])


def multiple_choice_prompt(question: str, options: Iterable[str], hint: str | None = None) -> str:
    """LLaVA's multiple-choice prompt: [hint\\n]question\\nA. x\\nB. y\\n<instruction>."""
    lines = [hint.strip()] if hint else []
    lines.append(question.strip())
    lines += [f"{letter}. {option}" for letter, option in zip(LETTERS, options)]
    lines.append(MULTIPLE_CHOICE_PROMPT)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# File helpers: every error names the file (and row)


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def require(row: Any, key: str, source: Path | str, row_id: Any) -> Any:
    """row[key], or a ValueError naming the file, the row and the missing field."""
    if not isinstance(row, dict):
        raise ValueError(f"{source}: row {row_id} is not an object")
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{source}: row {row_id} has no {key!r}")
    return value


def _list_of(obj: Any, key: str | None, path: Path) -> list[Any]:
    rows = obj.get(key) if key is not None and isinstance(obj, dict) else obj
    if not isinstance(rows, list):
        where = f"a list under {key!r}" if key else "a JSON list"
        raise ValueError(f"{path}: expected {where}")
    return rows


def is_missing(value: Any) -> bool:
    """Empty cell of a TSV/CSV (LLaVA's is_none: '', nan, none)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


# --------------------------------------------------------------------------------------------------
# Readers, one per benchmark


_COCO_IMAGE_FOLDERS = {"train2014": "train2014", "val2014": "val2014", "test2015": "test2015",
                       "test-dev2015": "test2015"}


def _read_vqav2(data: Path, opts: ReaderOptions) -> list[BenchmarkItem]:
    obj = read_json(data)
    rows = _list_of(obj, "questions", data)
    subtype = obj.get("data_subtype") or next((s for s in _COCO_IMAGE_FOLDERS if s in data.name), None)
    if subtype not in _COCO_IMAGE_FOLDERS:
        raise ValueError(f"{data}: cannot tell the COCO split (data_subtype {subtype!r}); "
                         f"expected one of {sorted(_COCO_IMAGE_FOLDERS)}")
    folder = _COCO_IMAGE_FOLDERS[subtype]
    items = []
    for i, row in enumerate(rows):
        qid = require(row, "question_id", data, i)
        image_id = int(require(row, "image_id", data, qid))
        question = require(row, "question", data, qid)
        items.append(BenchmarkItem(str(qid), f"COCO_{folder}_{image_id:012d}.jpg", short_answer_prompt(question),
                                   meta={"image_id": image_id}))
    return items


def _read_gqa(data: Path, opts: ReaderOptions) -> list[BenchmarkItem]:
    obj = read_json(data)
    if not isinstance(obj, dict):
        raise ValueError(f"{data}: expected a JSON object {{question_id: question}}")
    items = []
    for qid, row in obj.items():
        image_id = require(row, "imageId", data, qid)
        question = require(row, "question", data, qid)
        types = row.get("types") or {}
        items.append(BenchmarkItem(str(qid), f"{image_id}.jpg", short_answer_prompt(question), row.get("answer"),
                                   meta={"structural": types.get("structural"), "semantic": types.get("semantic")}))
    return items


def _textvqa_ocr_tokens(opts: ReaderOptions) -> dict[str, list[str]] | None:
    if opts.textvqa_ocr is False or opts.textvqa_ocr is None:
        return None
    if opts.textvqa_ocr is True:
        return {}
    path = Path(opts.textvqa_ocr).expanduser()
    rows = _list_of(read_json(path), "data", path)
    tokens = {}
    for i, row in enumerate(rows):
        tokens[str(require(row, "image_id", path, i))] = list(row.get("ocr_tokens") or [])
    return tokens


def _read_textvqa(data: Path, opts: ReaderOptions) -> list[BenchmarkItem]:
    rows = _list_of(read_json(data), "data", data)
    ocr = _textvqa_ocr_tokens(opts)
    items = []
    for i, row in enumerate(rows):
        qid = require(row, "question_id", data, i)
        image_id = str(require(row, "image_id", data, qid))
        question = require(row, "question", data, qid)
        extra = []
        if ocr is not None:
            tokens = ocr.get(image_id, row.get("ocr_tokens") or [])
            extra.append(f"Reference OCR token: {', '.join(tokens)}")
        items.append(BenchmarkItem(str(qid), f"{image_id}.jpg", short_answer_prompt(question, *extra),
                                   row.get("answers"), meta={"image_id": image_id}))
    return items


def _read_vizwiz(data: Path, opts: ReaderOptions) -> list[BenchmarkItem]:
    rows = _list_of(read_json(data), None, data)
    items = []
    for i, row in enumerate(rows):
        image = require(row, "image", data, i)
        question = require(row, "question", data, image)
        answers = [a["answer"] if isinstance(a, dict) else a for a in row.get("answers") or []] or None
        items.append(BenchmarkItem(image, image, short_answer_prompt(question, VIZWIZ_UNANSWERABLE_PROMPT),
                                   answers, meta={"answer_type": row.get("answer_type")}))
    return items


def pope_split(path: Path) -> str:
    """'coco_pope_adversarial.json' -> 'adversarial' (other names keep their stem)."""
    return path.stem[len("coco_pope_"):] if path.stem.startswith("coco_pope_") else path.stem


def _read_pope(data: Path, opts: ReaderOptions) -> list[BenchmarkItem]:
    files = sorted(data.glob("*pope_*.json")) if data.is_dir() else [data]
    if not files:
        raise FileNotFoundError(f"pope: no *pope_*.json files in {data}")
    items = []
    for path in files:
        split = pope_split(path)
        for i, row in enumerate(read_jsonl(path)):
            qid = require(row, "question_id", path, i)
            label = str(require(row, "label", path, qid)).strip().lower()
            if label not in ("yes", "no"):
                raise ValueError(f"{path}: row {qid} has label {label!r}, expected 'yes' or 'no'")
            items.append(BenchmarkItem(f"{split}/{qid}", require(row, "image", path, qid),
                                       short_answer_prompt(require(row, "text", path, qid)), label,
                                       meta={"split": split}))
    return items


def _mme_item(subtask: str, image: str, k: int, question: str, answer: str, source: Path,
              alt_images: list[str]) -> BenchmarkItem:
    answer = answer.strip()
    if answer.lower() not in ("yes", "no"):
        raise ValueError(f"{source}: question {question!r} has answer {answer!r}, expected Yes or No")
    return BenchmarkItem(f"{subtask}/{image}/{k}", f"{subtask}/{image}", short_answer_prompt(question), answer.lower(),
                         meta={"subtask": subtask, "image_key": f"{subtask}/{image}", "alt_images": alt_images})


def _split_tab_line(line: str, n: int, source: Path, lineno: int) -> list[str]:
    parts = line.rstrip("\r\n").split("\t")
    if len(parts) < n:
        raise ValueError(f"{source}:{lineno}: expected {n} tab-separated fields, got {len(parts)}")
    return parts


def _read_mme(data: Path, opts: ReaderOptions) -> list[BenchmarkItem]:
    if not data.is_dir():
        raise ValueError(f"mme: expected the MME release folder or eval_tool/Your_Results, got file {data}")
    items: list[BenchmarkItem] = []
    if any((data / f"{task}.txt").is_file() for task in MME_SUBTASKS):
        # eval_tool/Your_Results: {subtask}.txt with "image\tquestion\tanswer[\tprediction]" lines
        for task in MME_SUBTASKS:
            path = data / f"{task}.txt"
            if not path.is_file():
                continue
            seen: dict[str, int] = {}
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                image, question, answer = _split_tab_line(line, 3, path, lineno)[:3]
                k = seen.get(image, 0)
                seen[image] = k + 1
                items.append(_mme_item(task, image, k, question, answer, path, [f"{task}/images/{image}"]))
        return items
    for task in MME_SUBTASKS:
        folder = data / task
        if not folder.is_dir():
            continue
        qa_dir, image_dir, prefix = folder, folder, ""
        if (folder / "questions_answers_YN").is_dir():
            qa_dir, image_dir, prefix = folder / "questions_answers_YN", folder / "images", "images/"
        image_by_stem = {p.stem: p.name for p in image_dir.iterdir() if p.suffix.lower() != ".txt"}
        for path in sorted(qa_dir.glob("*.txt")):
            if path.stem not in image_by_stem:
                raise FileNotFoundError(f"mme: no image for {path} in {image_dir}")
            image = image_by_stem[path.stem]
            k = 0
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                question, answer = _split_tab_line(line, 2, path, lineno)[:2]
                item = _mme_item(task, image, k, question, answer, path, [])
                item.image = f"{task}/{prefix}{image}"
                items.append(item)
                k += 1
    if not items:
        raise FileNotFoundError(f"mme: no subtask folders ({', '.join(MME_SUBTASKS)}) or Your_Results "
                                f"txt files in {data}")
    return items


def _scienceqa_files(data: Path) -> tuple[Path, Path]:
    root = data if data.is_dir() else data.parent
    return root / "problems.json", root / "pid_splits.json"


def _read_scienceqa(data: Path, opts: ReaderOptions, image_only: bool = False) -> list[BenchmarkItem]:
    problems_path, splits_path = _scienceqa_files(data)
    problems, splits = read_json(problems_path), read_json(splits_path)
    if not isinstance(splits, dict) or "test" not in splits:
        raise ValueError(f"{splits_path}: no 'test' split")
    items = []
    for pid in splits["test"]:
        problem = problems.get(str(pid)) if isinstance(problems, dict) else None
        if problem is None:
            raise ValueError(f"{problems_path}: test problem {pid} is missing")
        image = problem.get("image")
        if image_only and not image:
            continue
        choices = require(problem, "choices", problems_path, pid)
        answer = require(problem, "answer", problems_path, pid)
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ValueError(f"{problems_path}: problem {pid} has answer {answer!r} outside its "
                             f"{len(choices)} choices")
        hint = (problem.get("hint") or "").strip()
        prompt = multiple_choice_prompt(require(problem, "question", problems_path, pid), choices,
                                        hint=f"Context: {hint}" if hint else None)
        items.append(BenchmarkItem(str(pid), f"{pid}/{image}" if image else None, prompt, LETTERS[answer],
                                   meta={"has_image": bool(image), "subject": problem.get("subject"),
                                         "n_options": len(choices), "options": list(choices)}))
    return items


def _read_scienceqa_img(data: Path, opts: ReaderOptions) -> list[BenchmarkItem]:
    return _read_scienceqa(data, opts, image_only=True)


def _read_tsv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    csv.field_size_limit(sys.maxsize)  # base64 image cells are megabytes long
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _image_suffix(payload: bytes) -> str:
    if payload.startswith(b"\x89PNG"):
        return ".png"
    if payload.startswith(b"GIF8"):
        return ".gif"
    if payload[:4] == b"RIFF" and payload[8:12] == b"WEBP":
        return ".webp"
    return ".jpg"


def _decode_mmbench_image(cell: str, base: int, cache: Path, path: Path) -> str:
    try:
        payload = base64.b64decode(cell, validate=False)
    except (binascii.Error, ValueError):
        raise ValueError(f"{path}: row {base} has an image that is not base64") from None
    target = cache / f"{base}{_image_suffix(payload)}"
    write_image_once(target, payload)
    return str(target.resolve())


def write_image_once(target: Path, payload: bytes) -> None:
    """Write a decoded image unless an equal-sized file is there; through a rename, since data-parallel ranks
    fill the same image cache at once and must never read a half-written file."""
    if target.is_file() and target.stat().st_size == len(payload):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(payload)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def mmbench_options(row: dict[str, str]) -> list[str]:
    """The option texts of an MMBench row: columns A, B, ... up to the first empty one (LLaVA)."""
    options = []
    for letter in LETTERS:
        if letter not in row or is_missing(row[letter]):
            break
        options.append(row[letter].strip())
    return options


def _read_mmbench(data: Path, opts: ReaderOptions) -> list[BenchmarkItem]:
    return mmbench_items(_read_tsv(data), data, opts)


def mmbench_items(rows: list[dict[str, str]], data: Path, opts: ReaderOptions) -> list[BenchmarkItem]:
    """MMBench rows (TSV cells as strings, the image base64) -> items, with circular rotations."""
    if rows and ("index" not in rows[0] or "question" not in rows[0]):
        raise ValueError(f"{data}: MMBench TSV needs 'index' and 'question' columns, got {list(rows[0])[:8]}")
    images: dict[int, str] = {}
    parsed = []
    for n, row in enumerate(rows):
        try:
            index = int(float(row["index"]))
        except (TypeError, ValueError):
            raise ValueError(f"{data}: row {n} has index {row.get('index')!r}, expected an integer") from None
        options = mmbench_options(row)
        if len(options) < 2:
            raise ValueError(f"{data}: row {index} has fewer than 2 options")
        answer = None if is_missing(row.get("answer")) else row["answer"].strip().upper()
        if answer is not None and answer not in LETTERS[:len(options)]:
            raise ValueError(f"{data}: row {index} has answer {answer!r}, not one of its options")
        if opts.image_cache is not None:
            cell = row.get("image") or ""
            if is_missing(cell):
                raise ValueError(f"{data}: row {index} has no image")
            images[index] = cell.strip()
        parsed.append((index, row, options, answer))
    has_rotations = any(index >= CIRCULAR_OFFSET for index, *_ in parsed)
    items = []
    for index, row, options, answer in parsed:
        base = index % CIRCULAR_OFFSET
        image = None
        if opts.image_cache is not None:
            cell = images[index]
            if cell.isdigit() and len(cell) < 64:  # VLMEvalKit stores a repeated image as the index of its row
                cell = images.get(int(cell), "")
            image = _decode_mmbench_image(cell, base, opts.image_cache, data)
        hint = None if is_missing(row.get("hint")) else row["hint"].strip()
        meta = {"base": base, "category": row.get("category"), "l2_category": row.get("l2-category"),
                "options": options}
        rotations = range(len(options)) if opts.circular and not has_rotations else range(1)
        for k in rotations:
            rotated = options[k:] + options[:k]
            letter = None if answer is None else LETTERS[(LETTERS.index(answer) - k) % len(options)]
            items.append(BenchmarkItem(str(index + k * CIRCULAR_OFFSET), image,
                                       multiple_choice_prompt(row["question"], rotated, hint), letter,
                                       meta={**meta, "rotation": k, "options": rotated}))
    return items


_MMVP_OPTION = re.compile(r"\(([a-z])\)\s*(.*?)\s*(?=\([a-z]\)|$)", re.IGNORECASE | re.DOTALL)


def parse_mmvp_options(text: str) -> list[str]:
    """'(a) Open (b) Closed' -> ['Open', 'Closed']."""
    return [option for _, option in _MMVP_OPTION.findall(text.strip())]


def _read_mmvp(data: Path, opts: ReaderOptions) -> list[BenchmarkItem]:
    path = data / "Questions.csv" if data.is_dir() else data
    if not path.is_file():
        raise FileNotFoundError(f"mmvp: file not found: {path}")
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    items = []
    for n, row in enumerate(rows):
        row = {k.strip(): v for k, v in row.items() if k is not None}
        index = str(require(row, "Index", path, n)).strip()
        options = parse_mmvp_options(require(row, "Options", path, index))
        if len(options) < 2:
            raise ValueError(f"{path}: row {index} has options {row['Options']!r}, expected '(a) .. (b) ..'")
        answer = require(row, "Correct Answer", path, index).strip().strip("()").upper()
        if answer not in LETTERS[:len(options)]:
            raise ValueError(f"{path}: row {index} has answer {row['Correct Answer']!r}, not one of its options")
        items.append(BenchmarkItem(index, f"{index}.jpg",
                                   multiple_choice_prompt(require(row, "Question", path, index), options),
                                   answer, meta={"index": int(index), "options": options}))
    return items


def _ai2d_stem_key(path: Path) -> tuple[int, str]:
    stem = path.name.split(".")[0]
    return (int(stem), "") if stem.isdigit() else (sys.maxsize, stem)


def _read_ai2d(data: Path, opts: ReaderOptions) -> list[BenchmarkItem]:
    questions_dir = data / "questions" if (data / "questions").is_dir() else data
    if not questions_dir.is_dir():
        raise ValueError(f"ai2d: expected the AI2D release root (with questions/), got {data}")
    test_ids_path = next((p for p in (data / "ai2d_test_ids.csv", questions_dir.parent / "ai2d_test_ids.csv")
                          if p.is_file()), None)
    test_ids = None
    if test_ids_path is not None:
        test_ids = {line.strip().split(".")[0] for line in test_ids_path.read_text().splitlines()
                    if line.strip()}
    items = []
    for path in sorted(questions_dir.glob("*.json"), key=_ai2d_stem_key):
        obj = read_json(path)
        image = require(obj, "imageName", path, path.name)
        if test_ids is not None and image.split(".")[0] not in test_ids:
            continue
        questions = obj.get("questions")
        if not isinstance(questions, dict):
            raise ValueError(f"{path}: expected an object under 'questions'")
        for text, q in questions.items():
            qid = require(q, "questionId", path, text)
            options = require(q, "answerTexts", path, qid)
            correct = require(q, "correctAnswer", path, qid)
            if not isinstance(correct, int) or not 0 <= correct < len(options):
                raise ValueError(f"{path}: question {qid} has correctAnswer {correct!r} outside its options")
            items.append(BenchmarkItem(str(qid), image, multiple_choice_prompt(text, options), LETTERS[correct],
                                       meta={"abc_label": bool(q.get("abcLabel")), "options": list(options)}))
    return items


def chartqa_split(path: Path) -> str:
    stem = path.stem.lower()
    return "human" if "human" in stem else "augmented" if "augmented" in stem else path.stem


def _read_chartqa(data: Path, opts: ReaderOptions) -> list[BenchmarkItem]:
    if data.is_dir():
        files = [p for p in (data / "test_human.json", data / "test_augmented.json") if p.is_file()]
        if not files:
            raise FileNotFoundError(f"chartqa: no test_human.json or test_augmented.json in {data}")
    else:
        files = [data]
    items = []
    for path in files:
        split = chartqa_split(path)
        for i, row in enumerate(_list_of(read_json(path), None, path)):
            label = require(row, "label", path, i)
            items.append(BenchmarkItem(f"{split}/{i}", require(row, "imgname", path, i),
                                       short_answer_prompt(require(row, "query", path, i)), str(label),
                                       meta={"split": split}))
    return items


def _read_seedbench_img(data: Path, opts: ReaderOptions) -> list[BenchmarkItem]:
    obj = read_json(data)
    rows = _list_of(obj, "questions", data)
    type_names = {v: k for k, v in (obj.get("question_type") or {}).items()}
    items = []
    for i, row in enumerate(rows):
        if row.get("data_type", "image") != "image":
            continue
        qid = require(row, "question_id", data, i)
        options = [require(row, f"choice_{c}", data, qid) for c in "abcd"]
        answer = require(row, "answer", data, qid).strip().upper()
        if answer not in LETTERS[:4]:
            raise ValueError(f"{data}: question {qid} has answer {answer!r}, expected A-D")
        type_id = row.get("question_type_id")
        items.append(BenchmarkItem(str(qid), require(row, "data_id", data, qid),
                                   multiple_choice_prompt(require(row, "question", data, qid), options), answer,
                                   meta={"question_type": type_names.get(type_id, type_id), "options": options}))
    return items


# What the original-release readers expect (the module table), for one-line errors.
ORIGINAL_LAYOUT = {
    "vqav2": "v2_OpenEnded_mscoco_val2014_questions.json", "gqa": "testdev_balanced_questions.json",
    "textvqa": "TextVQA_0.5.1_val.json", "vizwiz": "val.json", "pope": "coco_pope_{adversarial,popular,random}.json",
    "mme": "MME_Benchmark_release_version/ subtask folders", "scienceqa_img": "problems.json + pid_splits.json",
    "mmbench": "mmbench_dev.tsv", "mmvp": "Questions.csv", "ai2d": "questions/*.json (+ ai2d_test_ids.csv)",
    "chartqa": "test_human.json / test_augmented.json", "seedbench_img": "SEED-Bench.json",
}

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("vqav2", "VQAv2", _read_vqav2),
    Benchmark("gqa", "GQA", _read_gqa),
    Benchmark("textvqa", "TextVQA", _read_textvqa),
    Benchmark("vizwiz", "VizWiz", _read_vizwiz),
    Benchmark("pope", "POPE", _read_pope),
    Benchmark("mme", "MME", _read_mme),
    Benchmark("scienceqa", "ScienceQA (all test)", _read_scienceqa),
    Benchmark("scienceqa_img", "ScienceQA-IMG", _read_scienceqa_img),
    Benchmark("mmbench", "MMBench", _read_mmbench),
    Benchmark("mmvp", "MMVP", _read_mmvp),
    Benchmark("ai2d", "AI2D", _read_ai2d),
    Benchmark("chartqa", "ChartQA", _read_chartqa),
    Benchmark("seedbench_img", "SEED-Bench-IMG", _read_seedbench_img),
)}

ALIASES = {
    "vqa_v2": "vqav2", "vqa2": "vqav2", "text_vqa": "textvqa", "viz_wiz": "vizwiz",
    "sqa": "scienceqa", "sqa_img": "scienceqa_img", "scienceqaimg": "scienceqa_img",
    "mmbench_en": "mmbench", "mmbench_dev": "mmbench",
    "seed": "seedbench_img", "seedbench": "seedbench_img", "seed_bench": "seedbench_img",
    "seed_bench_img": "seedbench_img", "seed_img": "seedbench_img",
}
