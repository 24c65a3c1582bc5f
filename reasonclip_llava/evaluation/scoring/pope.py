"""POPE, per split (adversarial, popular, random), with "yes" as the positive class.

A prediction is "no" when its first sentence (text before the first '.'), with commas removed and
split on spaces, contains the word 'No', 'no' or 'not'; otherwise "yes" (LLaVA's eval_pope.py). A
question without an answer counts as wrong for accuracy and is left out of TP/FP/TN/FN.
Metrics are percentages; the headline accuracy and F1 are the means over the splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..benchmarks import read_items
from .common import ScoreResult, percent, select_ids

MODES = ("official",)


def pope_yes_no(text: str) -> str:
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def yes_precision_recall_f1(predictions: Sequence[str | None], labels: Sequence[str]) -> tuple[float, float, float]:
    """Precision, recall and F1 (fractions) with "yes" as the positive class."""
    tp = sum(p == "yes" and y == "yes" for p, y in zip(predictions, labels))
    fp = sum(p == "yes" and y == "no" for p, y in zip(predictions, labels))
    fn = sum(p == "no" and y == "yes" for p, y in zip(predictions, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def pope_metrics(predictions: Sequence[str | None], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1, yes-ratio (percent) and the confusion counts."""
    tp = sum(p == "yes" and y == "yes" for p, y in zip(predictions, labels))
    fp = sum(p == "yes" and y == "no" for p, y in zip(predictions, labels))
    tn = sum(p == "no" and y == "no" for p, y in zip(predictions, labels))
    fn = sum(p == "no" and y == "yes" for p, y in zip(predictions, labels))
    precision, recall, f1 = yes_precision_recall_f1(predictions, labels)
    return {"accuracy": percent(tp + tn, len(labels)), "precision": 100 * precision, "recall": 100 * recall,
            "f1": 100 * f1, "yes_ratio": percent(sum(p == "yes" for p in predictions), len(labels)),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": len(labels)}


def score_pope(answers: dict[str, str], annotations: Path, mode: str, keep: Sequence[str] | None) -> ScoreResult:
    items = {item.question_id: item for item in read_items("pope", annotations)}
    rows = []
    for qid in select_ids(items, keep, annotations):
        item, prediction = items[qid], answers.get(qid)
        parsed = None if prediction is None else pope_yes_no(prediction)
        rows.append({"question_id": qid, "prediction": prediction, "parsed": parsed, "label": item.answer,
                     "split": item.meta["split"], "score": float(parsed == item.answer)})
    per_split = {}
    for split in dict.fromkeys(r["split"] for r in rows):
        split_rows = [r for r in rows if r["split"] == split]
        per_split[split] = pope_metrics([r["parsed"] for r in split_rows], [r["label"] for r in split_rows])
    summary = {"accuracy": sum(m["accuracy"] for m in per_split.values()) / max(1, len(per_split)),
               "f1": sum(m["f1"] for m in per_split.values()) / max(1, len(per_split)),
               "per_split": per_split}
    return ScoreResult(summary, rows)
