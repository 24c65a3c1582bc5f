"""The VQA benchmarks as the lmms-lab parquet datasets that lmms-eval 0.7.3 downloads (images embedded).

`read_items` / `load_questions` in `benchmarks` hand a folder (or file) of parquet shards here; the
benchmark is told apart by its columns, as lmms-eval's task `utils.py` read them. Hub names are lmms-eval
0.7.3's `dataset_path` (its task YAMLs); lmms-eval moved the image sets from `lmms-lab/*` to
`lmms-lab-encoder/*` with the same files, so a snapshot of either name reads the same:

| benchmark     | Hub dataset (config), lmms-eval 0.7.3      | formerly        | split     | columns read                              |
|---------------|--------------------------------------------|-----------------|-----------|-------------------------------------------|
| vqav2         | lmms-lab-encoder/VQAv2                     | lmms-lab/VQAv2  | validation | question_id, question, answers[{answer, answer_id, ..}], answer_type, question_type, image |
| gqa           | lmms-lab-encoder/GQA (testdev_balanced_instructions + testdev_balanced_images) | lmms-lab/GQA | testdev | id, imageId, question, answer, types; images: id, image |
| textvqa       | lmms-lab-encoder/textvqa                   | lmms-lab/textvqa | validation | question_id, question, answers[str], ocr_tokens, image |
| vizwiz        | lmms-lab-encoder/VizWiz-VQA                | lmms-lab/VizWiz-VQA | val    | question_id, question, answers[str], category, image |
| pope          | lmms-lab-encoder/POPE                      | lmms-lab/POPE   | test      | question_id, question, answer, category, image_source, image |
| mme           | lmms-lab-encoder/MME                       | lmms-lab/MME    | test      | question_id, question, answer, category, image |
| scienceqa_img | lmms-lab-encoder/ScienceQA (ScienceQA-IMG) | lmms-lab/ScienceQA | test   | question, choices, answer (int), hint, subject, image |
| mmbench       | lmms-lab-encoder/MMBench (en)              | lmms-lab/MMBench | dev      | index, question, hint, A-D, answer, category, L2-category, image |
| mmvp          | lmms-lab-eval/MMVP (corrected)             | MMVP/MMVP       | train     | Index, Question, Options, Correct Answer, image |
| ai2d          | lmms-lab-encoder/ai2d                      | lmms-lab/ai2d   | test      | question, options, answer (index as string), image |
| chartqa       | lmms-lab-encoder/ChartQA                   | lmms-lab/ChartQA | test     | type (human_test / augmented_test), question, answer, image |
| seedbench_img | lmms-lab-encoder/SEED-Bench                | lmms-lab/SEED-Bench | test   | question_id, question, choice_a-d, answer, data_type, question_type_id, image[list] |

MMVP: `MMVP/MMVP` is an imagefolder whose Hub copy does not load the Questions.csv annotations (read it
as the original release instead, `benchmarks._read_mmvp`); `lmms-lab-eval/MMVP` merges them and corrects
two swapped pairs (Index 99/100, long/short tusks; 279/280, standing/sitting), so the two give different
ground truth on those four questions. lmms-eval 0.7.3 reads the corrected copy.

Splits are found as the Hub names them (`split_files`): `{split}-{i:05d}-of-{n:05d}[-<hash>].parquet`,
`{split}.parquet` or a `{split}/` folder, under `data/` or a config folder. A split with a missing
shard, or files whose split cannot be told, is a one-line error naming them, never a guess.

Rows without a natural id (ScienceQA, AI2D, ChartQA) are numbered in file order, as lmms-eval's
doc_id (`meta["doc_id"]` for every benchmark). Each item keeps its row (without the image) in
`meta["doc"]`, the input of lmms-eval's `*_process_results` that `scoring.lmms_eval` reproduces. Images
are written once to the image cache (`--images`, e.g. OUT/images) as `<benchmark>/<row>.<ext>` when
questions are loaded; scoring never decodes them. `prompts="lmms_eval"` gives the prompt lmms-eval's
task sends (`LMMS_PROMPTS`: its doc_to_text with the YAML's default lmms_eval_specific_kwargs, which
`llava_hf` uses) and the rows it asks (MMBench: no rotations added to those in the split).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
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
    write_image_once,
)

IMAGE_COLUMNS = ("image",)


@dataclass(frozen=True)
class ParquetLayout:
    hub_id: str                     # lmms-eval 0.7.3's dataset_path
    split: str                      # the split lmms-eval evaluates (its test_split)
    columns: tuple[str, ...]        # columns that identify the benchmark (all must be present)
    build: Callable[[dict, int, ReaderOptions], BenchmarkItem | None] | None
    config: str | None = None       # the Hub config folder lmms-eval reads, when the repo has several
    formerly: str | None = None     # the Hub name before lmms-eval moved it

    def expected(self) -> str:
        where = f"{self.hub_id} ({self.config})" if self.config else self.hub_id
        before = f", formerly {self.formerly}" if self.formerly else ""
        return f"{where}{before} parquet ({self.split}-*.parquet with columns {', '.join(self.columns)})"


# ---- lmms-eval's prompts: doc_to_text with the task YAML's default lmms_eval_specific_kwargs --------------
# Each function restates one task's utils.py; tests/test_eval_lmms_lab.py compares them with lmms-eval's own.

_SHORT_POST = "\n" + SHORT_ANSWER_PROMPT
_CHOICE_POST = "\n" + MULTIPLE_CHOICE_PROMPT


def _not_missing(value: Any) -> bool:
    # pandas.notna for the values a parquet row holds (None, NaN, strings, numbers)
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _lmms_vqav2(doc: dict, opts: ReaderOptions) -> str:  # vqav2 / gqa: f"{pre}{question}{post}"
    return f"{doc['question']}{_SHORT_POST}"


def _lmms_textvqa(doc: dict, opts: ReaderOptions) -> str:
    ocr = f"\nReference OCR token: {', '.join(doc['ocr_tokens'])}" if opts.textvqa_ocr else ""
    return f"{doc['question'].capitalize()}{ocr}{_SHORT_POST}"


def _lmms_vizwiz(doc: dict, opts: ReaderOptions) -> str:
    return f"{doc['question'].capitalize()}\n{VIZWIZ_UNANSWERABLE_PROMPT}{_SHORT_POST}"


def _lmms_pope(doc: dict, opts: ReaderOptions) -> str:
    return f"{doc['question'].strip()}{_SHORT_POST}"


_MME_YES_NO = " Please answer yes or no."


def _lmms_mme(doc: dict, opts: ReaderOptions) -> str:  # a non-empty post prompt replaces the yes/no request
    return f"{doc['question'].strip().replace(_MME_YES_NO, '')}{_SHORT_POST}"


def _choices(options: list) -> str:
    return "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, options))


def _lmms_scienceqa(doc: dict, opts: ReaderOptions) -> str:
    context = doc["hint"]
    if context:
        context = f"Context: {context}\n"
    return f"{context}{doc['question']}\n{_choices(doc['choices'])}{_CHOICE_POST}"


def _lmms_mmbench(doc: dict, opts: ReaderOptions) -> str:
    # en_utils.mmbench_doc_to_text + MMBench_Evaluator.create_options_prompt; mmbench.yaml's sys_prompt, and
    # the YAML post prompt (which starts with a newline) after one more newline
    options = {c: doc[c] for c in "ABCDE" if c in doc and doc[c]}
    listed = "".join(f"{c}. {text}\n" for c, text in sorted(options.items()) if _not_missing(text) and text != "nan")
    options_prompt = f"There are several options:\n{listed}".rstrip("\n")
    hint = doc["hint"]
    if _not_missing(hint) and hint != "nan":
        query = f"{hint} {doc['question']} {options_prompt}"
    else:
        query = f"{doc['question']} {options_prompt}"
    return f"{query}\n{_CHOICE_POST}"


_LMMS_MMVP_OPTION = re.compile(r"\([a-z]\)\s*([^(]+?)(?=\s*\([a-z]\)|$)", re.IGNORECASE)


def lmms_mmvp_options(text: str) -> list[str]:
    """mmvp/utils._parse_options: an option's text ends at the next '(' (unlike the release parser)."""
    return [match.strip() for match in _LMMS_MMVP_OPTION.findall(text)]


def _lmms_mmvp(doc: dict, opts: ReaderOptions) -> str:
    question = doc.get("Question", doc.get("question", ""))
    options = doc.get("Options", doc.get("options", ""))
    options = lmms_mmvp_options(options) if isinstance(options, str) else options
    return f"{question}\n{_choices(options)}{_CHOICE_POST}"


def _lmms_ai2d(doc: dict, opts: ReaderOptions) -> str:  # prompt_format mcq
    return f"{doc['question']}\n{_choices(doc['options'])}{_CHOICE_POST}"


def _lmms_chartqa(doc: dict, opts: ReaderOptions) -> str:
    return f"{doc['question']}\nAnswer the question with a single word."


def _lmms_seedbench(doc: dict, opts: ReaderOptions) -> str:  # seed_doc_to_text takes no kwargs
    options = "\n".join(f"{letter}. {doc[f'choice_{letter.lower()}']}" for letter in "ABCD")
    return f"{doc['question']}\n{options}{_CHOICE_POST}"


LMMS_PROMPTS: dict[str, Callable[[dict, ReaderOptions], str]] = {
    "vqav2": _lmms_vqav2, "gqa": _lmms_vqav2, "textvqa": _lmms_textvqa, "vizwiz": _lmms_vizwiz, "pope": _lmms_pope,
    "mme": _lmms_mme, "scienceqa_img": _lmms_scienceqa, "mmbench": _lmms_mmbench, "mmvp": _lmms_mmvp,
    "ai2d": _lmms_ai2d, "chartqa": _lmms_chartqa, "seedbench_img": _lmms_seedbench,
}


# ---- one builder per benchmark: row (image column dropped) -> item with LLaVA's prompt -----------------------

def _vqav2(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    return BenchmarkItem(str(doc["question_id"]), None, short_answer_prompt(doc["question"]),
                         [a["answer"] for a in doc["answers"] or []] or None,
                         meta={"answer_type": doc.get("answer_type"), "question_type": doc.get("question_type")})


def _gqa(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    types = doc.get("types") or {}
    return BenchmarkItem(str(doc["id"]), None, short_answer_prompt(doc["question"]), doc["answer"],
                         meta={"structural": types.get("structural"), "semantic": types.get("semantic"),
                               "image_key": str(doc["imageId"])})


def _textvqa(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    ocr = [f"Reference OCR token: {', '.join(doc.get('ocr_tokens') or [])}"] if opts.textvqa_ocr else []
    return BenchmarkItem(str(doc["question_id"]), None, short_answer_prompt(doc["question"], *ocr),
                         list(doc.get("answers") or []) or None, meta={"image_id": doc.get("image_id")})


def _vizwiz(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    return BenchmarkItem(str(doc["question_id"]), None, short_answer_prompt(doc["question"], VIZWIZ_UNANSWERABLE_PROMPT),
                         list(doc.get("answers") or []) or None, meta={"answer_type": doc.get("category")})


def _pope(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    split = str(doc["category"])
    return BenchmarkItem(f"{split}/{doc['question_id']}", None, short_answer_prompt(doc["question"]),
                         doc["answer"].strip().lower(), meta={"split": split})


def _mme(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    key, subtask = str(doc["question_id"]), str(doc["category"])
    return BenchmarkItem(key, None, short_answer_prompt(doc["question"]), doc["answer"].strip().lower().replace(".", ""),
                         meta={"subtask": subtask, "image_key": key if key.startswith(f"{subtask}/") else f"{subtask}/{key}"})


def _scienceqa(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    hint, choices = (doc.get("hint") or "").strip(), list(doc["choices"])
    prompt = multiple_choice_prompt(doc["question"], choices, hint=f"Context: {hint}" if hint else None)
    return BenchmarkItem(str(n), None, prompt, LETTERS[int(doc["answer"])],
                         meta={"has_image": True, "subject": doc.get("subject"), "n_options": len(choices), "options": choices})


def _mmvp(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    index = str(doc["Index"])
    options = parse_mmvp_options(doc["Options"])
    answer = doc["Correct Answer"].strip().strip("()").upper()
    return BenchmarkItem(index, None, multiple_choice_prompt(doc["Question"], options), answer,
                         meta={"index": int(index), "options": options})


def _ai2d(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    options = list(doc["options"])
    return BenchmarkItem(str(n), None, multiple_choice_prompt(doc["question"], options), LETTERS[int(doc["answer"])],
                         meta={"options": options})


def _chartqa(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem:
    split = "human" if "human" in str(doc["type"]) else "augmented"
    return BenchmarkItem(f"{split}/{n}", None, short_answer_prompt(doc["question"]), str(doc["answer"]),
                         meta={"split": split})


def _seedbench(doc: dict, n: int, opts: ReaderOptions) -> BenchmarkItem | None:
    if doc.get("data_type", "image") != "image":
        return None
    options = [doc[f"choice_{c}"] for c in "abcd"]
    return BenchmarkItem(str(doc["question_id"]), None, multiple_choice_prompt(doc["question"], options),
                         doc["answer"].strip().upper(), meta={"question_type": doc.get("question_type_id"), "options": options})


LAYOUTS: dict[str, ParquetLayout] = {
    "vqav2": ParquetLayout("lmms-lab-encoder/VQAv2", "validation", ("question_id", "question", "answers", "multiple_choice_answer"),
                           _vqav2, formerly="lmms-lab/VQAv2"),
    "gqa": ParquetLayout("lmms-lab-encoder/GQA", "testdev", ("id", "imageId", "question", "answer", "fullAnswer"), _gqa,
                         config="testdev_balanced_instructions", formerly="lmms-lab/GQA"),
    "textvqa": ParquetLayout("lmms-lab-encoder/textvqa", "validation", ("question_id", "question", "answers", "ocr_tokens"), _textvqa,
                             formerly="lmms-lab/textvqa"),
    "vizwiz": ParquetLayout("lmms-lab-encoder/VizWiz-VQA", "val", ("question_id", "question", "answers", "category"), _vizwiz,
                            formerly="lmms-lab/VizWiz-VQA"),
    "pope": ParquetLayout("lmms-lab-encoder/POPE", "test", ("question_id", "question", "answer", "category", "image_source"), _pope,
                          formerly="lmms-lab/POPE"),
    "mme": ParquetLayout("lmms-lab-encoder/MME", "test", ("question_id", "question", "answer", "category"), _mme, formerly="lmms-lab/MME"),
    "scienceqa_img": ParquetLayout("lmms-lab-encoder/ScienceQA", "test", ("question", "choices", "answer", "hint", "lecture"),
                                   _scienceqa, config="ScienceQA-IMG", formerly="lmms-lab/ScienceQA"),
    "mmbench": ParquetLayout("lmms-lab-encoder/MMBench", "dev", ("index", "question", "hint", "A", "B", "answer", "L2-category"), None,
                             config="en", formerly="lmms-lab/MMBench"),
    "mmvp": ParquetLayout("lmms-lab-eval/MMVP", "train", ("Index", "Question", "Options", "Correct Answer"), _mmvp),
    "ai2d": ParquetLayout("lmms-lab-encoder/ai2d", "test", ("question", "options", "answer"), _ai2d, formerly="lmms-lab/ai2d"),
    "chartqa": ParquetLayout("lmms-lab-encoder/ChartQA", "test", ("type", "question", "answer"), _chartqa, formerly="lmms-lab/ChartQA"),
    "seedbench_img": ParquetLayout("lmms-lab-encoder/SEED-Bench", "test", ("question_id", "question", "choice_a", "data_type"), _seedbench,
                                   formerly="lmms-lab/SEED-Bench"),
}
GQA_IMAGES = ("id", "image")  # the testdev_balanced_images config
GQA_IMAGES_CONFIG = "testdev_balanced_images"


def parquet_files(data: Path) -> list[Path]:
    """The parquet shards at `data` (a file, or every *.parquet below a folder), sorted."""
    if data.is_file():
        return [data] if data.suffix == ".parquet" else []
    return sorted(data.rglob("*.parquet")) if data.is_dir() else []


def is_parquet_input(data: Path) -> bool:
    return bool(parquet_files(data))


def _looks_like(columns: set[str]) -> str | None:
    # the most specific layout whose identifying columns are all there (MME's are a subset of POPE's)
    matches = [other for other, layout in LAYOUTS.items() if set(layout.columns) <= columns]
    return max(matches, key=lambda other: len(LAYOUTS[other].columns)) if matches else None


def benchmark_of(data: Path, candidates: tuple[str, ...]) -> str:
    """Which of `candidates` the parquet at `data` holds (by its columns), or a one-line error."""
    import pyarrow.parquet as pq

    files = parquet_files(data)
    columns = set(pq.read_schema(files[0]).names) if files else set()
    found = _looks_like(columns)
    if found not in candidates:
        raise ValueError(f"{data}: not the lmms-lab parquet of {' / '.join(candidates)} (columns {', '.join(sorted(columns)[:8])})")
    return found


# ---- splits as the Hub names them ----------------------------------------------------------------------------

# datasets' shard names: {split}-{index:05d}-of-{count:05d}, with a "-<hash>" suffix where
# huggingface_hub uploaded them; split names are word characters (datasets' _split_re).
_SHARD = re.compile(r"^(?P<split>\w+(?:\.\w+)*)-(?P<index>\d{5})-of-(?P<count>\d{5})(?:-[\w.]+)?$")
# Names that say "a split" when a whole file or folder is called so (datasets' keywords and lmms-lab's splits).
SPLIT_WORDS = frozenset({"train", "training", "validation", "valid", "val", "dev", "test", "testing", "testdev",
                         "eval", "evaluation", *(layout.split for layout in LAYOUTS.values())})


@dataclass(frozen=True)
class ShardName:
    split: str | None               # None: the name does not say
    index: int | None = None
    count: int | None = None


def shard_name(path: Path, root: Path) -> ShardName:
    """The split a parquet file belongs to by its name (or its folder's), as the Hub tells them."""
    match = _SHARD.match(path.stem)
    if match:
        return ShardName(match.group("split"), int(match.group("index")), int(match.group("count")))
    if path.stem in SPLIT_WORDS:
        return ShardName(path.stem)
    folders = path.relative_to(root).parts[:-1] if path != root else ()
    named = [folder for folder in folders if folder in SPLIT_WORDS]
    return ShardName(named[-1] if named else None)


def split_files(name: str, files: list[Path], root: Path, split: str) -> list[Path]:
    """The files of `split` among `files`; a split that cannot be told apart or lacks shards is an error."""
    chosen: dict[Path, list[tuple[Path, ShardName]]] = defaultdict(list)  # folder -> shards of the split
    others: set[str] = set()
    unknown: list[Path] = []
    for path in files:
        shard = shard_name(path, root)
        if shard.split is None:
            unknown.append(path)
        elif shard.split == split:
            chosen[path.parent].append((path, shard))
        else:
            others.add(shard.split)
    if unknown and len(files) == 1:
        return files  # one file given, whatever its name: it is the split
    if unknown:
        names = ", ".join(str(p.relative_to(root)) if p != root else p.name for p in unknown[:4])
        more = f" (+{len(unknown) - 4} more)" if len(unknown) > 4 else ""
        raise ValueError(f"{name}: cannot tell which split {names}{more} under {root} belong(s) to; lmms-eval reads "
                         f"'{split}': name its shards {split}-00000-of-0000N.parquet as the Hub does, or give the file itself")
    if not chosen:
        found = f" (found split{'s' if len(others) > 1 else ''} {', '.join(sorted(others))})" if others else ""
        raise FileNotFoundError(f"{name}: no '{split}' shard under {root}{found}")
    for folder, shards in chosen.items():
        counts = {shard.count for _, shard in shards if shard.count is not None}
        numbered = [shard.index for _, shard in shards if shard.index is not None]
        if len(counts) > 1 or (numbered and len(numbered) != len(shards)):
            raise ValueError(f"{name}: the '{split}' shards in {folder} disagree on their number "
                             f"({', '.join(p.name for p, _ in shards)})")
        if counts:
            (count,) = counts
            missing = sorted(set(range(count)) - set(numbered))
            if missing or len(numbered) != len(set(numbered)):
                what = (f"shard(s) {', '.join(f'{i:05d}' for i in missing)} of {count:05d} missing" if missing
                        else "a shard index appears twice")
                raise ValueError(f"{name}: '{split}' in {folder}: {what} ({', '.join(p.name for p, _ in sorted(shards))})")
    return sorted(path for shards in chosen.values() for path, _ in shards)


def _in_config(files: list[Path], data: Path, configs: set[str]) -> list[Path]:
    # a whole Hub repo: keep the config folders lmms-eval reads (a folder given below them keeps all)
    def folders(path: Path) -> set[str]:
        return set(path.relative_to(data).parts[:-1]) if path != data else set()

    if any(folders(path) & configs for path in files):
        return [path for path in files if folders(path) & configs]
    return files


def _split_files(name: str, data: Path) -> tuple[list[Path], list[Path]]:
    """(question shards, GQA image shards) of the benchmark's split; a wrong dataset is one line."""
    import pyarrow.parquet as pq

    layout = LAYOUTS[name]
    files = parquet_files(data)
    if layout.config:
        files = _in_config(files, data, {layout.config} | ({GQA_IMAGES_CONFIG} if name == "gqa" else set()))
    images: list[Path] = []
    if name == "gqa":  # the images config: by folder, or by its columns where the folders do not say
        def is_images(path: Path) -> bool:
            if path != data and GQA_IMAGES_CONFIG in path.relative_to(data).parts[:-1]:
                return True
            columns = set(pq.read_schema(path).names)
            return set(GQA_IMAGES) <= columns and "question" not in columns

        images = [path for path in files if is_images(path)]
        files = [path for path in files if path not in images]
        images = split_files(name, images, data, layout.split) if images else []
    if not files:
        raise FileNotFoundError(f"{name}: no {layout.split}-*.parquet shard under {data}; expected {layout.expected()}")
    try:
        questions = split_files(name, files, data, layout.split)
    except FileNotFoundError:
        _check_columns(name, files[:1])  # another dataset altogether says so before its split names do
        raise
    _check_columns(name, questions)
    return questions, images


def _check_columns(name: str, files: list[Path]) -> None:
    import pyarrow.parquet as pq

    for path in files:
        columns = set(pq.read_schema(path).names)
        found = _looks_like(columns)
        if found != name:
            what = f"the lmms-lab parquet of {found}" if found else f"not an lmms-lab parquet ({', '.join(sorted(columns)[:8])})"
            raise ValueError(f"{name}: {path} is {what}; expected {LAYOUTS[name].expected()}")


def _write_image(value: Any, target_stem: Path, where: str) -> str:
    if isinstance(value, list):  # SEED-Bench: a list of images, one for the image questions
        value = value[0] if value else None
    payload = value.get("bytes") if isinstance(value, dict) else None
    if not payload:
        raise ValueError(f"{where}: no embedded image bytes")
    target = target_stem.with_suffix(_image_suffix(payload))
    write_image_once(target, payload)
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
            raise FileNotFoundError(f"gqa: no {GQA_IMAGES_CONFIG} parquet (columns id, image) under {data}")
        for path in image_files:
            for row in pq.read_table(path).to_pylist():
                gqa_images[str(row["id"])] = row["image"]
    lmms_prompt = LMMS_PROMPTS[name] if opts.prompts == "lmms_eval" else None
    items: list[BenchmarkItem] = []
    number = 0  # lmms-eval's doc_id: the row's place in the split
    for path in files:
        names = pq.read_schema(path).names
        columns = names if with_images else [c for c in names if c not in IMAGE_COLUMNS]
        if name == "mmbench":
            rows = pq.read_table(path, columns=columns).to_pylist()
            items += _mmbench(rows, number, path, opts, cache)
            number += len(rows)
            continue
        for row in _rows(path, columns):
            where = f"{path.name} row {number}"
            try:
                item = layout.build(row, number, opts)
                doc = {k: v for k, v in row.items() if k not in IMAGE_COLUMNS}
                if item is not None and lmms_prompt is not None:
                    item.prompt = lmms_prompt(doc, opts)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
                raise ValueError(f"{name}: {where}: malformed {error!s}") from None
            if item is not None:
                item.meta["doc"], item.meta["doc_id"] = doc, number
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


def _mmbench(rows: list[dict], first_doc_id: int, path: Path, opts: ReaderOptions, cache: Path | None) -> list[BenchmarkItem]:
    import base64

    cells = []
    for row in rows:
        cell = {k: ("" if v is None else str(v)) for k, v in row.items() if k != "image"}
        cell["l2-category"] = cell.get("L2-category", "")
        if cache is not None:
            cell["image"] = base64.b64encode((row.get("image") or {}).get("bytes") or b"").decode()
        cells.append(cell)
    # lmms-eval asks the rows of the split as they are; LLaVA's protocol adds the rotations a split lacks
    circular = opts.circular and opts.prompts != "lmms_eval"
    items = mmbench_items(cells, path, ReaderOptions(circular=circular, image_cache=cache, prompts=opts.prompts))
    by_index = {int(float(r["index"])): ({k: v for k, v in r.items() if k != "image"}, first_doc_id + n)
                for n, r in enumerate(rows)}
    for item in items:
        index = int(item.question_id)
        if index in by_index:  # the lmms-lab dev split holds the rotated rows itself
            item.meta["doc"], item.meta["doc_id"] = by_index[index]
        else:  # a rotation made here: the base row with its options rotated
            rotated = dict(zip(LETTERS, item.meta["options"]))
            item.meta["doc"] = {**by_index[index % 1_000_000][0], **{c: rotated.get(c) for c in "ABCD"},
                                "index": index, "answer": item.answer}
        if opts.prompts == "lmms_eval":
            item.prompt = _lmms_mmbench(item.meta["doc"], opts)
    return items
