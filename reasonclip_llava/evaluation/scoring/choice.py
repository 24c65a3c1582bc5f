"""Multiple-choice benchmarks: ScienceQA, MMBench (circular), MMVP (pairs), AI2D, SEED-Bench-IMG.

Reading the chosen letter:
- ScienceQA uses LLaVA's eval_science_qa.py rule (`scienceqa_letter`): the whole answer is a letter
  A-E; or it starts with "X. "; or it contains "The answer is X." exactly once. Anything else, or a
  letter beyond the problem's choices, is FAILED (wrong).
- The others use `extract_choice`, the exact-matching stage of the MMBench / VLMEvalKit extractor
  (the official MMBench protocol falls back to an LLM judge, which is not used here), in order:
  1. the answer is just a letter, optionally in brackets or followed by '.', ':' or ')';
  2. it starts with a letter in brackets or followed by '.', ':' or ')' ("B. dog", "(c) cat");
  3. "answer is X" / "answer: X";
  4. exactly one option letter appears as a word once '.()[],:;!*#{}' are spaces (a lone 'A' in a
     longer sentence is read as the article and ignored);
  5. exactly one option's text appears in the answer (case-insensitive);
  else no letter (wrong).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..benchmarks import CIRCULAR_OFFSET, BenchmarkItem, read_items
from .common import ScoreResult, grouped_percent, mean_percent, select_ids

MODES = ("official",)
_SCIENCEQA_OPTIONS = "ABCDE"   # LLaVA's --options default
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
_BARE_LETTER = re.compile(r"^[(\[]?([A-Za-z])[)\].:]?$")
_LEADING_LETTER = re.compile(r"^[(\[]([A-Za-z])[)\]]|^([A-Z])[.:)]")
_ANSWER_IS = re.compile(r"answer(?:\s+is)?\s*:?\s*[(\[]?([A-Z])(?![A-Za-z])", re.IGNORECASE)
_SEPARATORS = str.maketrans({c: " " for c in ".()[],:;!*#{}"})


def scienceqa_letter(text: str, n_options: int) -> str | None:
    """LLaVA's ScienceQA parsing; None where LLaVA says FAILED."""
    text = text.strip()
    if text in _SCIENCEQA_OPTIONS:
        letter = text
    elif len(text) >= 3 and text[0] in _SCIENCEQA_OPTIONS and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _THE_ANSWER_IS.findall(text)
        letter = found[0] if len(found) == 1 else None
    return letter if letter and letter in _SCIENCEQA_OPTIONS[:n_options] else None


def extract_choice(text: str, n_options: int, options: Sequence[str] | None = None) -> str | None:
    """The option letter an answer chooses, or None (see the module docstring for the order)."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n_options]
    text = text.strip()
    if not text:
        return None
    bare = _BARE_LETTER.match(text)
    if bare and bare.group(1).upper() in letters:
        return bare.group(1).upper()
    leading = _LEADING_LETTER.match(text)
    if leading and (leading.group(1) or leading.group(2)).upper() in letters:
        return (leading.group(1) or leading.group(2)).upper()
    stated = _ANSWER_IS.search(text)
    if stated and stated.group(1) in letters:
        return stated.group(1)
    words = text.translate(_SEPARATORS).split()
    named = [letter for letter in letters if letter in words]
    if len(named) == 1 and not (named[0] == "A" and len(words) > 3):
        return named[0]
    if options:
        lowered = text.lower()
        hits = [letter for letter, option in zip(letters, options) if str(option).strip().lower() in lowered]
        if len(hits) == 1:
            return hits[0]
    return None


def _choice_rows(answers: dict[str, str], items: dict[str, BenchmarkItem], ids: Sequence[str],
                 annotations: Path) -> list[dict]:
    rows = []
    for qid in ids:
        item, prediction = items[qid], answers.get(qid)
        if item.answer is None:
            raise ValueError(f"{annotations}: question {qid} has no answer (a split without answers?)")
        options = item.meta["options"]
        parsed = None if prediction is None else extract_choice(prediction, len(options), options)
        rows.append({"question_id": qid, "prediction": prediction, "parsed": parsed, "answer": item.answer,
                     "score": float(parsed == item.answer)})
    return rows


def _load(benchmark: str, annotations: Path, keep: Sequence[str] | None, **kwargs) -> tuple[dict, list[str]]:
    items = {item.question_id: item for item in read_items(benchmark, annotations, **kwargs)}
    return items, select_ids(items, keep, annotations)


def score_scienceqa(answers: dict[str, str], annotations: Path, mode: str, keep: Sequence[str] | None,
                    benchmark: str = "scienceqa") -> ScoreResult:
    items, ids = _load(benchmark, annotations, keep)
    rows = []
    for qid in ids:
        item, prediction = items[qid], answers.get(qid)
        parsed = None if prediction is None else scienceqa_letter(prediction, item.meta["n_options"])
        rows.append({"question_id": qid, "prediction": prediction, "parsed": parsed, "answer": item.answer,
                     "has_image": item.meta["has_image"], "subject": item.meta["subject"],
                     "score": float(parsed == item.answer)})
    with_image = [r["score"] for r in rows if r["has_image"]]
    summary = {"accuracy": mean_percent([r["score"] for r in rows]), "img_accuracy": mean_percent(with_image),
               "n_img": len(with_image), "per_subject": grouped_percent(rows, "subject")}
    return ScoreResult(summary, rows)


def score_scienceqa_img(answers: dict[str, str], annotations: Path, mode: str,
                        keep: Sequence[str] | None) -> ScoreResult:
    return score_scienceqa(answers, annotations, mode, keep, benchmark="scienceqa_img")


def score_mmbench(answers: dict[str, str], annotations: Path, mode: str, keep: Sequence[str] | None) -> ScoreResult:
    """Circular: a question is right only if every rotation of it is right. When neither the TSV nor
    the answers hold any rotation (index >= 1e6), the single pass is scored ('circular': False)."""
    items = {item.question_id: item for item in read_items("mmbench", annotations, circular=True)}
    rotated_in_tsv = any(item.meta["rotation"] == 0 and int(qid) >= CIRCULAR_OFFSET for qid, item in items.items())
    rotated_answers = any(qid in items and items[qid].meta["rotation"] > 0 for qid in answers)
    circular = rotated_in_tsv or rotated_answers
    if not circular:
        items = {qid: item for qid, item in items.items() if item.meta["rotation"] == 0}
    ids = select_ids(items, keep, annotations)
    rows = _choice_rows(answers, items, ids, annotations)
    groups: dict[int, list[dict]] = {}
    for row in rows:
        item = items[row["question_id"]]
        row.update(base=item.meta["base"], category=item.meta["category"], l2_category=item.meta["l2_category"])
        groups.setdefault(item.meta["base"], []).append(row)
    questions = [{"score": float(all(r["score"] == 1.0 for r in group)), "category": group[0]["category"],
                  "l2_category": group[0]["l2_category"]} for group in groups.values()]
    first_pass = [r["score"] for r in rows if int(r["question_id"]) < CIRCULAR_OFFSET]
    summary = {"accuracy": mean_percent([q["score"] for q in questions]), "circular": circular,
               "n_questions": len(questions), "accuracy_single_pass": mean_percent(first_pass),
               "per_category": grouped_percent(questions, "category"),
               "per_l2_category": grouped_percent(questions, "l2_category")}
    return ScoreResult(summary, rows)


def score_mmvp(answers: dict[str, str], annotations: Path, mode: str, keep: Sequence[str] | None) -> ScoreResult:
    """Pairs (Index 1-2, 3-4, ...) ask one question of two images; a pair counts only if both are
    right. Headline 'accuracy' is the pair accuracy (MMVP's number); 'question_accuracy' the plain one."""
    items, ids = _load("mmvp", annotations, keep)
    rows = _choice_rows(answers, items, ids, annotations)
    pairs: dict[int, list[float]] = {}
    for row in rows:
        row["pair"] = (items[row["question_id"]].meta["index"] - 1) // 2
        pairs.setdefault(row["pair"], []).append(row["score"])
    complete = [scores for scores in pairs.values() if len(scores) == 2]
    summary = {"accuracy": mean_percent([float(all(s == 1.0 for s in p)) for p in complete]),
               "question_accuracy": mean_percent([r["score"] for r in rows]), "n_pairs": len(complete),
               "incomplete_pairs": len(pairs) - len(complete)}
    return ScoreResult(summary, rows)


def score_ai2d(answers: dict[str, str], annotations: Path, mode: str, keep: Sequence[str] | None) -> ScoreResult:
    items, ids = _load("ai2d", annotations, keep)
    rows = _choice_rows(answers, items, ids, annotations)
    return ScoreResult({"accuracy": mean_percent([r["score"] for r in rows])}, rows)


def score_seedbench_img(answers: dict[str, str], annotations: Path, mode: str,
                        keep: Sequence[str] | None) -> ScoreResult:
    """Accuracy over all image questions (LLaVA's total_correct / total_count) and per question type."""
    items, ids = _load("seedbench_img", annotations, keep)
    rows = _choice_rows(answers, items, ids, annotations)
    for row in rows:
        row["question_type"] = items[row["question_id"]].meta["question_type"]
    summary = {"accuracy": mean_percent([r["score"] for r in rows]),
               "per_question_type": grouped_percent(rows, "question_type")}
    return ScoreResult(summary, rows)
