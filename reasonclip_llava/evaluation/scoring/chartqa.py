"""ChartQA relaxed accuracy (Methani et al.; the Pix2Struct / Qwen-VL / lmms-eval rule).

Both sides are stripped. When the prediction parses as a number (a trailing '%' divides by 100) and
the gold answer parses as a non-zero number, the prediction is right within 5% relative change of the
gold; otherwise it must equal the gold after lowercasing. Reported per split (human, augmented) and
overall (the mean over all questions, as lmms-eval's relaxed_overall).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..benchmarks import read_items
from .common import ScoreResult, grouped_percent, mean_percent, select_ids

MODES = ("official",)
MAX_RELATIVE_CHANGE = 0.05


def _to_float(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str, target: str, max_relative_change: float = MAX_RELATIVE_CHANGE) -> bool:
    prediction, target = prediction.strip(), target.strip()
    prediction_float, target_float = _to_float(prediction), _to_float(target)
    if prediction_float is not None and target_float:
        return abs(prediction_float - target_float) / abs(target_float) <= max_relative_change
    return prediction.lower() == target.lower()


def score_chartqa(answers: dict[str, str], annotations: Path, mode: str, keep: Sequence[str] | None) -> ScoreResult:
    items = {item.question_id: item for item in read_items("chartqa", annotations)}
    rows = []
    for qid in select_ids(items, keep, annotations):
        item, prediction = items[qid], answers.get(qid)
        correct = prediction is not None and relaxed_correctness(prediction, item.answer)
        rows.append({"question_id": qid, "prediction": prediction, "answer": item.answer,
                     "split": item.meta["split"], "score": float(correct)})
    summary = {"accuracy": mean_percent([r["score"] for r in rows]), "per_split": grouped_percent(rows, "split")}
    return ScoreResult(summary, rows)
