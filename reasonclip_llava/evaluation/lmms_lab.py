"""The VQA benchmarks as the lmms-lab parquet datasets that lmms-eval downloads (images embedded).

`read_items` / `load_questions` in `benchmarks` hand a folder (or file) of parquet shards here; the
benchmark is told apart by its columns, as lmms-eval's task `utils.py` read them (lmms-eval 0.7):

| benchmark     | Hub dataset (config)                      | split file       | columns read                                              |
|---------------|-------------------------------------------|------------------|-----------------------------------------------------------|
| vqav2         | lmms-lab/VQAv2                            | validation-*     | question_id, question, answers[{answer, answer_id, ..}], answer_type, question_type, image |
| gqa           | lmms-lab/GQA (testdev_balanced_instructions + testdev_balanced_images) | testdev-* | id, imageId, question, answer, types; images: id, image |
| textvqa       | lmms-lab/textvqa                          | validation-*     | question_id, question, answers[str], ocr_tokens, image    |
| vizwiz        | lmms-lab/VizWiz-VQA                       | val-*            | question_id, question, answers[str], category, image      |
| pope          | lmms-lab/POPE                             | test-*           | question_id, question, answer, category, image_source, image |
| mme           | lmms-lab/MME                              | test-*           | question_id, question, answer, category, image            |
| scienceqa_img | lmms-lab/ScienceQA (ScienceQA-IMG)        | test-*           | question, choices, answer (int), hint, subject, image     |
| mmbench       | lmms-lab/MMBench (en)                     | dev-*            | index, question, hint, A-D, answer, category, L2-category, image |
| mmvp          | lmms-lab/MMVP                             | train-*          | Index, Question, Options, Correct Answer, image           |
| ai2d          | lmms-lab/ai2d                             | test-*           | question, options, answer (index as string), image        |
| chartqa       | lmms-lab/ChartQA                          | test-*           | type (human_test / augmented_test), question, answer, image |
| seedbench_img | lmms-lab/SEED-Bench                       | test-*           | question_id, question, choice_a-d, answer, data_type, question_type_id, image[list] |

Rows without a natural id (ScienceQA, AI2D, ChartQA) are numbered in file order, as lmms-eval's
doc_id. Each item keeps its row (without the image) in `meta["doc"]`, the input of lmms-eval's
`*_process_results` that `scoring.lmms_eval` reproduces. Images are written once to the image cache
(`--images`, e.g. OUT/images) as `<benchmark>/<row>.<ext>` when questions are loaded; scoring never
decodes them. `prompts="lmms_eval"` gives lmms-eval's default prompts (doc_to_text with the task
YAML's default pre/post prompts) instead of LLaVA's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .benchmarks import (
    LETTERS,
    MULTIPLE_CHOICE_PROMPT,
    SHORT_ANSWER_PROMPT,
    VIZWIZ_UNANSWERABLE_PROMPT,
    BenchmarkItem,
    ReaderOptions,
    _image_suffix,
    mmbench_items,
    multiple_choice_prompt,
    parse_mmvp_options,
    short_answer_prompt,
)

IMAGE_COLUMNS = ("image",)
_SHARD = re.compile(r"^(?P<split>[A-Za-z_]+)-\d{5}-of-\d{5}$")


@dataclass(frozen=True)
class ParquetLayout:
    hub_id: str
    split: str                      # shard prefix of the split lmms-eval evaluates
    columns: tuple[str, ...]        # columns that identify the benchmark (all must be present)
    build: Callable[[dict, int, ReaderOptions], BenchmarkItem | None]
    config: str | None = None       # the Hub config folder lmms-eval reads, when the repo has several

    def expected(self) -> str:
        return f"{self.hub_id} parquet ({self.split}-*.parquet with columns {', '.join(self.columns)})"


# ---- lmms-eval's prompts (doc_to_text with the YAML defaults) ---------------------------------------------

def _lmms_mc(question: str, options: list[str], context: str = "") -> str:
    choices = "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, options))
    return f"{context}{question}\n{choices}\n{MULTIPLE_CHOICE_PROMPT}"


def _short(opts: ReaderOptions, llava: str, lmms: str) -> str:
    return lmms if opts.prompts == "lmms_eval" else llava


# ---- one builder per benchmark: row (image column dropped) -> item -----------------------------------------

def _vqav2(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    question = doc["question"]
    return BenchmarkItem(str(doc["question_id"]), None,
                         _short(opts, short_answer_prompt(question), f"{question}\n{SHORT_ANSWER_PROMPT}"),
                         [a["answer"] for a in doc["answers"] or []] or None,
                         meta={"answer_type": doc.get("answer_type"), "question_type": doc.get("question_type")})


def _gqa(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    question, types = doc["question"], doc.get("types") or {}
    return BenchmarkItem(str(doc["id"]), None,
                         _short(opts, short_answer_prompt(question), f"{question}\n{SHORT_ANSWER_PROMPT}"), doc["answer"],
                         meta={"structural": types.get("structural"), "semantic": types.get("semantic"),
                               "image_key": str(doc["imageId"])})


def _textvqa(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    question = doc["question"]
    ocr = [f"Reference OCR token: {', '.join(doc.get('ocr_tokens') or [])}"] if opts.textvqa_ocr else []
    lmms = f"{question.capitalize()}{''.join(chr(10) + line for line in ocr)}\n{SHORT_ANSWER_PROMPT}"
    return BenchmarkItem(str(doc["question_id"]), None, _short(opts, short_answer_prompt(question, *ocr), lmms),
                         list(doc.get("answers") or []) or None, meta={"image_id": doc.get("image_id")})


def _vizwiz(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    question = doc["question"]
    lmms = f"{question.capitalize()}\n{VIZWIZ_UNANSWERABLE_PROMPT}\n{SHORT_ANSWER_PROMPT}"
    return BenchmarkItem(str(doc["question_id"]), None,
                         _short(opts, short_answer_prompt(question, VIZWIZ_UNANSWERABLE_PROMPT), lmms),
                         list(doc.get("answers") or []) or None, meta={"answer_type": doc.get("category")})


def _pope(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    split, question = str(doc["category"]), doc["question"].strip()
    return BenchmarkItem(f"{split}/{doc['question_id']}", None,
                         _short(opts, short_answer_prompt(question), f"{question}\n{SHORT_ANSWER_PROMPT}"),
                         doc["answer"].strip().lower(), meta={"split": split})


_MME_YES_NO = " Please answer yes or no."


def _mme(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    question, key = doc["question"].strip(), str(doc["question_id"])
    lmms = f"{question.replace(_MME_YES_NO, '')}\n{SHORT_ANSWER_PROMPT}"
    subtask = str(doc["category"])
    return BenchmarkItem(key, None, _short(opts, short_answer_prompt(question), lmms),
                         doc["answer"].strip().lower().replace(".", ""),
                         meta={"subtask": subtask, "image_key": key if key.startswith(f"{subtask}/") else f"{subtask}/{key}"})


def _scienceqa(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    hint, choices = (doc.get("hint") or "").strip(), list(doc["choices"])
    llava = multiple_choice_prompt(doc["question"], choices, hint=f"Context: {hint}" if hint else None)
    context = f"Context: {doc['hint']}\n" if doc.get("hint") else ""
    return BenchmarkItem(str(n), None, _short(opts, llava, _lmms_mc(doc["question"], choices, context)),
                         LETTERS[int(doc["answer"])],
                         meta={"has_image": True, "subject": doc.get("subject"), "n_options": len(choices), "options": choices})


def _mmvp(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    index = str(doc["Index"])
    options = parse_mmvp_options(doc["Options"])
    answer = doc["Correct Answer"].strip().strip("()").upper()
    return BenchmarkItem(index, None, _short(opts, multiple_choice_prompt(doc["Question"], options),
                                             _lmms_mc(doc["Question"], options)),
                         answer, meta={"index": int(index), "options": options})


def _ai2d(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    options = list(doc["options"])
    return BenchmarkItem(str(n), None, _short(opts, multiple_choice_prompt(doc["question"], options),
                                              _lmms_mc(doc["question"], options)),
                         LETTERS[int(doc["answer"])], meta={"options": options})


def _chartqa(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    split = "human" if "human" in str(doc["type"]) else "augmented"
    question = doc["question"]
    return BenchmarkItem(f"{split}/{n}", None, _short(opts, short_answer_prompt(question),
                                                      f"{question}\nAnswer the question with a single word."),
                         str(doc["answer"]), meta={"split": split})


def _seedbench(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem | None:
    if doc.get("data_type", "image") != "image":
        return None
    options = [doc[f"choice_{c}"] for c in "abcd"]
    lmms = doc["question"] + "\n" + "\n".join(f"{letter}. {o}" for letter, o in zip("ABCD", options)) + \
        f"\n{MULTIPLE_CHOICE_PROMPT}"
    return BenchmarkItem(str(doc["question_id"]), None, _short(opts, multiple_choice_prompt(doc["question"], options), lmms),
                         doc["answer"].strip().upper(), meta={"question_type": doc.get("question_type_id"), "options": options})


LAYOUTS: dict[str, ParquetLayout] = {
    "vqav2": ParquetLayout("lmms-lab/VQAv2", "validation", ("question_id", "question", "answers", "multiple_choice_answer"), _vqav2),
    "gqa": ParquetLayout("lmms-lab/GQA", "testdev", ("id", "imageId", "question", "answer", "fullAnswer"), _gqa,
                         config="testdev_balanced_instructions"),
    "textvqa": ParquetLayout("lmms-lab/textvqa", "validation", ("question_id", "question", "answers", "ocr_tokens"), _textvqa),
    "vizwiz": ParquetLayout("lmms-lab/VizWiz-VQA", "val", ("question_id", "question", "answers", "category"), _vizwiz),
    "pope": ParquetLayout("lmms-lab/POPE", "test", ("question_id", "question", "answer", "category", "image_source"), _pope),
    "mme": ParquetLayout("lmms-lab/MME", "test", ("question_id", "question", "answer", "category"), _mme),
    "scienceqa_img": ParquetLayout("lmms-lab/ScienceQA (ScienceQA-IMG)", "test", ("question", "choices", "answer", "hint", "lecture"),
                                   _scienceqa, config="ScienceQA-IMG"),
    "mmbench": ParquetLayout("lmms-lab/MMBench (en)", "dev", ("index", "question", "hint", "A", "B", "answer", "L2-category"), None,
                             config="en"),
    "mmvp": ParquetLayout("lmms-lab/MMVP", "train", ("Index", "Question", "Options", "Correct Answer"), _mmvp),
    "ai2d": ParquetLayout("lmms-lab/ai2d", "test", ("question", "options", "answer"), _ai2d),
    "chartqa": ParquetLayout("lmms-lab/ChartQA", "test", ("type", "question", "answer"), _chartqa),
    "seedbench_img": ParquetLayout("lmms-lab/SEED-Bench", "test", ("question_id", "question", "choice_a", "data_type"), _seedbench),
}
GQA_IMAGES = ("id", "image")  # the testdev_balanced_images config


def parquet_files(data: Path) -> list[Path]:
    """The parquet shards at `data` (a file, or every *.parquet below a folder), sorted."""
    if data.is_file():
        return [data] if data.suffix == ".parquet" else []
    return sorted(data.rglob("*.parquet")) if data.is_dir() else []


def is_parquet_input(data: Path) -> bool:
    return bool(parquet_files(data))


def _looks_like(columns: set[str], name: str) -> str | None:
    # the most specific layout whose identifying columns are all there (MME's are a subset of POPE's)
    matches = [other for other, layout in LAYOUTS.items() if set(layout.columns) <= columns]
    return max(matches, key=lambda other: len(LAYOUTS[other].columns)) if matches else None


def benchmark_of(data: Path, candidates: tuple[str, ...]) -> str:
    """Which of `candidates` the parquet at `data` holds (by its columns), or a one-line error."""
    import pyarrow.parquet as pq

    files = parquet_files(data)
    columns = set(pq.read_schema(files[0]).names) if files else set()
    found = _looks_like(columns, candidates[0])
    if found not in candidates:
        raise ValueError(f"{data}: not the lmms-lab parquet of {' / '.join(candidates)} (columns {', '.join(sorted(columns)[:8])})")
    return found


def _split_files(name: str, data: Path) -> tuple[list[Path], list[Path]]:
    """(question shards, GQA image shards) of the benchmark's split; a wrong dataset is one line."""
    import pyarrow.parquet as pq

    layout = LAYOUTS[name]
    questions, images = [], []
    files = parquet_files(data)
    if layout.config and any(layout.config in path.relative_to(data).parts[:-1] for path in files if path != data):
        # a whole Hub repo: keep lmms-eval's config (and, for GQA, its images config)
        files = [path for path in files if {layout.config, "testdev_balanced_images"} & set(path.relative_to(data).parts[:-1])]
    for path in files:
        columns = set(pq.read_schema(path).names)
        if name == "gqa" and set(GQA_IMAGES) <= columns and "question" not in columns:
            images.append(path)
            continue
        found = _looks_like(columns, name)
        if found != name:
            what = f"the lmms-lab parquet of {found}" if found else f"not an lmms-lab parquet ({', '.join(sorted(columns)[:8])})"
            raise ValueError(f"{name}: {path} is {what}; expected {layout.expected()}")
        match = _SHARD.match(path.stem)
        if match is None or match.group("split") == layout.split or len(files) == 1:
            questions.append(path)
    if not questions:
        raise FileNotFoundError(f"{name}: no {layout.split}-*.parquet shard under {data}; expected {layout.expected()}")
    return questions, images


def _write_image(value: Any, target_stem: Path, where: str) -> str:
    if isinstance(value, list):  # SEED-Bench: a list of images, one for the image questions
        value = value[0] if value else None
    payload = value.get("bytes") if isinstance(value, dict) else None
    if not payload:
        raise ValueError(f"{where}: no embedded image bytes")
    target = target_stem.with_suffix(_image_suffix(payload))
    if not (target.is_file() and target.stat().st_size == len(payload)):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload)
    return str(target.resolve())


def read_lmms_lab(name: str, data: Path, opts: ReaderOptions) -> list[BenchmarkItem]:
    """Items of `name` from its lmms-lab parquet; images written under opts.image_cache when given."""
    import pyarrow.parquet as pq

    layout = LAYOUTS[name]
    files, image_files = _split_files(name, data)
    with_images = opts.image_cache is not None
    cache = opts.image_cache / name if with_images else None
    gqa_images: dict[str, Any] = {}
    if name == "gqa" and with_images:
        if not image_files:
            raise FileNotFoundError(f"gqa: no testdev_balanced_images parquet (columns id, image) under {data}")
        for path in image_files:
            for row in pq.read_table(path).to_pylist():
                gqa_images[str(row["id"])] = row["image"]
    items: list[BenchmarkItem] = []
    number = 0
    for path in files:
        names = pq.read_schema(path).names
        columns = names if with_images else [c for c in names if c not in IMAGE_COLUMNS]
        if name == "mmbench":
            items += _mmbench(pq.read_table(path, columns=columns).to_pylist(), path, opts, cache)
            continue
        for row in _rows(path, columns):
            where = f"{path.name} row {number}"
            try:
                item = layout.build(row, number, opts)
            except (KeyError, TypeError, ValueError, IndexError) as error:
                raise ValueError(f"{name}: {where}: malformed {error!s}") from None
            if item is not None:
                item.meta["doc"] = {k: v for k, v in row.items() if k not in IMAGE_COLUMNS}
                if with_images:
                    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", item.question_id)
                    value = gqa_images.get(item.meta["image_key"]) if name == "gqa" else row.get("image")
                    if name == "gqa" and value is None:
                        raise FileNotFoundError(f"gqa: {where}: image {item.meta['image_key']} not in the images parquet")
                    if name == "mme":  # the two questions of an image share its file
                        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", item.meta["image_key"])
                    item.image = _write_image(value, cache / safe, where)
                items.append(item)
            number += 1
    if name == "mme":  # ids "{subtask}/{image}/{k}" as the release reader gives them
        seen: dict[str, int] = {}
        for item in items:
            k = seen.get(item.meta["image_key"], 0)
            seen[item.meta["image_key"]] = k + 1
            item.question_id = f"{item.meta['image_key']}/{k}"
    return items


def _rows(path: Path, columns: list[str]):
    # batch by batch: a shard with embedded images can be larger than memory wants at once
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=columns):
        yield from batch.to_pylist()


def _mmbench(rows: list[dict], path: Path, opts: ReaderOptions, cache: Path | None) -> list[BenchmarkItem]:
    import base64

    cells = []
    for row in rows:
        cell = {k: ("" if v is None else str(v)) for k, v in row.items() if k != "image"}
        cell["l2-category"] = cell.get("L2-category", "")
        if cache is not None:
            cell["image"] = base64.b64encode((row.get("image") or {}).get("bytes") or b"").decode()
        cells.append(cell)
    items = mmbench_items(cells, path, ReaderOptions(circular=opts.circular, image_cache=cache, prompts=opts.prompts))
    by_index = {int(float(r["index"])): {k: v for k, v in r.items() if k != "image"} for r in rows}
    for item in items:
        index = int(item.question_id)
        if index in by_index:  # the lmms-lab dev split holds the rotated rows itself
            item.meta["doc"] = by_index[index]
        else:  # a rotation made here: the base row with its options rotated
            rotated = dict(zip(LETTERS, item.meta["options"]))
            item.meta["doc"] = {**by_index[index % 1_000_000], **{c: rotated.get(c) for c in "ABCD"},
                                "index": index, "answer": item.answer}
        if opts.prompts == "lmms_eval":
            item.prompt = _lmms_mmbench_prompt(item.meta["doc"], item.meta["options"])
    return items


def _lmms_mmbench_prompt(doc: dict, options: list[str]) -> str:
    # en_utils.mmbench_doc_to_text: "{hint} {question} There are several options:\nA. ..\nB. ..\n{post}"
    body = "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, options))
    hint = doc.get("hint")
    question = f"{hint} {doc['question']}" if hint not in (None, "", "nan") and hint == hint else doc["question"]
    return f"{question} There are several options:\n{body}\n{MULTIPLE_CHOICE_PROMPT}"
