"""MME (the eval_tool's calculation.py): per subtask acc + acc+, perception and cognition sums.

A prediction is read as in calculation.py: lowercased, "yes"/"no" as is, else "yes" if the first four
characters contain "yes", else "no" if they contain "no", else "other" (always wrong). acc is the
share of right answers, acc+ the share of images whose questions are all right; the subtask score is
100 * (acc + acc+), at most 200. Perception sums its 10 subtasks (max 2000), cognition its 4 (max
800). The headline 'score' is the perception sum (LLaVA's "MME"); 'total' adds cognition.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..benchmarks import MME_COGNITION, MME_PERCEPTION, MME_SUBTASKS, read_items
from .common import ScoreResult, select_ids

MODES = ("official",)


def mme_yes_no(text: str) -> str:
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def score_mme(answers: dict[str, str], annotations: Path, mode: str, keep: Sequence[str] | None) -> ScoreResult:
    items = {item.question_id: item for item in read_items("mme", annotations)}
    rows = []
    for qid in select_ids(items, keep, annotations):
        item, prediction = items[qid], answers.get(qid)
        parsed = "other" if prediction is None else mme_yes_no(prediction)
        rows.append({"question_id": qid, "prediction": prediction, "parsed": parsed, "answer": item.answer,
                     "subtask": item.meta["subtask"], "image": item.meta["image_key"],
                     "score": float(parsed == item.answer)})
    per_subtask = {}
    for task in MME_SUBTASKS:
        task_rows = [r for r in rows if r["subtask"] == task]
        if not task_rows:
            continue
        by_image: dict[str, bool] = {}
        for r in task_rows:
            by_image[r["image"]] = by_image.get(r["image"], True) and r["score"] == 1.0
        acc = 100 * sum(r["score"] for r in task_rows) / len(task_rows)
        acc_plus = 100 * sum(by_image.values()) / len(by_image)
        per_subtask[task] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
                             "n_questions": len(task_rows), "n_images": len(by_image),
                             "other": sum(r["parsed"] == "other" for r in task_rows)}
    perception = sum(per_subtask[t]["score"] for t in MME_PERCEPTION if t in per_subtask)
    cognition = sum(per_subtask[t]["score"] for t in MME_COGNITION if t in per_subtask)
    summary = {"score": perception, "perception": perception, "cognition": cognition,
               "total": perception + cognition, "per_subtask": per_subtask,
               "subtasks_missing": [t for t in MME_SUBTASKS if t not in per_subtask]}
    return ScoreResult(summary, rows)
