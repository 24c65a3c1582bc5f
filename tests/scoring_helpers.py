"""Helpers of tests/test_scoring_*.py: fixture paths and answers files in LLaVA's format."""

from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vqa"


def write_answers(path: Path, answers: dict[str, str], key: str = "text") -> Path:
    """One {"question_id", key} object a line, like LLaVA's answer files."""
    with open(path, "w", encoding="utf-8") as f:
        for qid, text in answers.items():
            f.write(json.dumps({"question_id": qid, "prompt": "", key: text, "model_id": "fixture"}) + "\n")
    return path
