"""What every scorer shares: reading answers files, choosing the questions to score, the result type."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..answers import check_single_identity, parse_header
from ..benchmarks import CIRCULAR_OFFSET, read_json


@dataclass
class ScoreResult:
    summary: dict[str, Any]             # headline 'accuracy' (or 'score'), breakdowns; percentages
    per_question: list[dict[str, Any]]  # {"question_id", "prediction" (None: no answer), "score", ...}


class Scorer(Protocol):
    def __call__(self, answers: dict[str, str], annotations: Path, mode: str,
                 keep: Sequence[str] | None) -> ScoreResult: ...


def read_answers(path: str | Path, benchmark: str | None = None) -> dict[str, str]:
    """question_id -> answer text from an answers file.

    JSONL, one {"question_id", "text"} (LLaVA) or {"question_id", "answer"} (VQA results) object a
    line, or a JSON list of such objects. A row with LLaVA's MMBench "round_id" r > 0 is stored under
    question_id + r * 1e6, the id of that rotation here. The header lines of `eval vqa` (answers.py) are
    not answers: a file whose headers or rows name two runs (or two models) is refused, and so is one
    whose header names another benchmark than `benchmark`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"answers file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = [(i, row) for i, row in enumerate(json.loads(text))]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        where = "item"
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        where = "line"
    headers = [parse_header(json.dumps(row)) for _, row in rows]
    identities = [identity for identity in headers if identity is not None]
    rows = [(n, row) for (n, row), identity in zip(rows, headers) if identity is None]
    identity = check_single_identity(path, identities, {str(row["model_id"]) for _, row in rows
                                                        if isinstance(row, dict) and "model_id" in row})
    if identity and benchmark and identity.get("benchmark") not in (None, benchmark):
        raise ValueError(f"{path} holds answers to {identity['benchmark']}, not {benchmark}")
    answers: dict[str, str] = {}
    for n, row in rows:
        if not isinstance(row, dict) or "question_id" not in row:
            raise ValueError(f"{path}: {where} {n} has no 'question_id'")
        value = row.get("text", row.get("answer"))
        if not isinstance(value, str):
            raise ValueError(f"{path}: {where} {n} (question {row['question_id']}) has no 'text' or 'answer' string")
        qid = str(row["question_id"])
        if row.get("round_id"):
            try:
                qid = str(int(qid) + int(row["round_id"]) * CIRCULAR_OFFSET)
            except (TypeError, ValueError):
                raise ValueError(f"{path}: {where} {n} has round_id {row['round_id']!r} but a non-integer "
                                 f"question_id {qid!r}") from None
        if qid in answers:
            raise ValueError(f"{path}: question {qid} is answered twice")
        answers[qid] = value
    return answers


def read_question_ids(path: str | Path) -> list[str]:
    """The question ids of a questions file: VQA's {"questions": [...]}, a JSON list, or JSONL rows."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"questions file not found: {path}")
    if path.suffix == ".jsonl":  # (an answers file of `eval vqa` works too: its header is not a question)
        rows = [row for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
                for row in [json.loads(line)] if parse_header(line) is None]
    else:
        obj = read_json(path)
        rows = obj.get("questions") if isinstance(obj, dict) else obj
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of questions (or {{'questions': [...]}})")
    ids = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "question_id" not in row:
            raise ValueError(f"{path}: question {i} has no 'question_id'")
        ids.append(str(row["question_id"]))
    return ids


def select_ids(ids: Iterable[str], keep: Sequence[str] | None, annotations: Path) -> list[str]:
    """`ids` in their order, restricted to `keep` (every kept id must be known)."""
    ids = list(ids)
    if keep is None:
        return ids
    known = set(ids)
    for qid in keep:
        if qid not in known:
            raise ValueError(f"question {qid!r} of the questions file is not in {annotations}")
    wanted = set(keep)
    return [qid for qid in ids if qid in wanted]


def percent(numerator: float, denominator: float) -> float:
    return 100.0 * numerator / denominator if denominator else 0.0


def mean_percent(values: Sequence[float]) -> float:
    return percent(sum(values), len(values))


def grouped_percent(rows: Iterable[dict[str, Any]], key: str) -> dict[str, float]:
    """Mean score (percent) of the rows per value of rows[key] (rows without the key are left out)."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        if row.get(key) is not None:
            groups.setdefault(str(row[key]), []).append(row["score"])
    return {name: mean_percent(scores) for name, scores in groups.items()}
