"""GQA: exact match with the single gold answer.

- 'official': LLaVA's convert_gqa_for_eval.py (prediction.rstrip('.').lower()) followed by GQA's
  eval.py, which compares it with the gold answer as released.
- 'evalai' (also what `--mode lmms_eval` does per item): lmms-eval's exact_match with ignore_case and ignore_punctuation, both
  sides lowercased and stripped of string.punctuation.
Breakdowns by the question's structural and semantic type, as GQA's eval.py reports them.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

from ..benchmarks import read_items
from .common import ScoreResult, grouped_percent, mean_percent, select_ids

MODES = ("official", "evalai")
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def llava_gqa_answer(text: str) -> str:
    return text.strip().rstrip(".").lower()


def lmms_eval_gqa_answer(text: str) -> str:
    return text.strip().lower().translate(_NO_PUNCTUATION)


def score_gqa(answers: dict[str, str], annotations: Path, mode: str, keep: Sequence[str] | None) -> ScoreResult:
    items = {item.question_id: item for item in read_items("gqa", annotations)}
    rows = []
    for qid in select_ids(items, keep, annotations):
        item, prediction = items[qid], answers.get(qid)
        if item.answer is None:
            raise ValueError(f"{annotations}: question {qid} has no 'answer' (a split without answers?)")
        gold = str(item.answer)
        if prediction is None:
            correct = False
        elif mode == "official":
            correct = llava_gqa_answer(prediction) == gold
        else:
            correct = lmms_eval_gqa_answer(prediction) == lmms_eval_gqa_answer(gold)
        rows.append({"question_id": qid, "prediction": prediction, "answer": gold, "score": float(correct),
                     "structural": item.meta["structural"], "semantic": item.meta["semantic"]})
    summary = {"accuracy": mean_percent([r["score"] for r in rows]),
               "per_structural_type": grouped_percent(rows, "structural"),
               "per_semantic_type": grouped_percent(rows, "semantic")}
    return ScoreResult(summary, rows)
