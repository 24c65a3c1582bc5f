"""Official scorers of the VQA benchmarks and `score_answers`, the function behind `reasonclip eval score`.

One module per benchmark family: vqa_accuracy (VQAv2, TextVQA, VizWiz), gqa, pope, mme, choice
(ScienceQA, MMBench, MMVP, AI2D, SEED-Bench-IMG), chartqa. Pure python: no torch import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..benchmarks import canonical_benchmark
from . import chartqa, choice, gqa, mme, pope, vqa_accuracy
from .common import ScoreResult, Scorer, read_answers, read_question_ids

# name -> (scorer, accepted modes; the first is the default)
SCORERS: dict[str, tuple[Scorer, tuple[str, ...]]] = {
    "vqav2": (vqa_accuracy.score_vqa, vqa_accuracy.MODES),
    "textvqa": (vqa_accuracy.score_vqa, vqa_accuracy.MODES),
    "vizwiz": (vqa_accuracy.score_vqa, vqa_accuracy.MODES),
    "gqa": (gqa.score_gqa, gqa.MODES),
    "pope": (pope.score_pope, pope.MODES),
    "mme": (mme.score_mme, mme.MODES),
    "scienceqa": (choice.score_scienceqa, choice.MODES),
    "scienceqa_img": (choice.score_scienceqa_img, choice.MODES),
    "mmbench": (choice.score_mmbench, choice.MODES),
    "mmvp": (choice.score_mmvp, choice.MODES),
    "ai2d": (choice.score_ai2d, choice.MODES),
    "chartqa": (chartqa.score_chartqa, chartqa.MODES),
    "seedbench_img": (choice.score_seedbench_img, choice.MODES),
}
_MODE_ALIASES = {"lmms-eval": "lmms_eval", "llava": "evalai"}
LMMS_EVAL = "lmms_eval"  # lmms-eval's own per-item functions (scoring/lmms_eval.py), lmms-lab parquet input


def score_answers(
    benchmark: str,
    answers: str | Path,
    annotations: str | Path,
    questions: str | Path | None = None,
    mode: str = "official",
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score an answers file against a benchmark's released annotations.

    answers: JSONL of {"question_id", "text"} (LLaVA) or {"question_id", "answer"}, or a JSON list.
    annotations: the benchmark's ground-truth file or folder (VQAv2: the annotations JSON; the others:
        the same file/folder given to `load_questions` as `data`).
    questions: optional questions file whose ids restrict the scored set (VQAv2 questions JSON, a JSON
        list or JSONL with "question_id"); without it every annotated question is scored.
    mode: 'official' (default: the benchmark's own scorer); 'evalai' for VQAv2/TextVQA/VizWiz and GQA
        (LLaVA's answer processing); 'lmms_eval': lmms-eval's `*_process_results` + aggregation, item by
        item (lmms-lab parquet annotations). The summary's "mode" says which produced it.
    out_dir: when given, writes {benchmark}_scores.jsonl (one row per question) and {benchmark}_summary.json.

    Unanswered questions score 0 ('missing' counts them); answers to unknown ids are ignored
    ('extra'), but an answers file matching no question at all is an error. Returns the summary, with
    a headline 'accuracy' in percent ('score' for MME).
    """
    name = canonical_benchmark(benchmark)
    scorer, modes = SCORERS[name]
    mode = _MODE_ALIASES.get(mode.lower(), mode.lower())
    if mode == LMMS_EVAL:
        from .lmms_eval import COVERED, score_lmms_eval

        if name not in COVERED:
            raise ValueError(f"{name}: unknown mode {mode!r}; {name} accepts {', '.join(modes)}")
        scorer = lambda answers_, annotations_, mode_, keep_: score_lmms_eval(name, answers_, annotations_, keep_)  # noqa: E731
    elif mode not in modes:
        raise ValueError(f"{name}: unknown mode {mode!r}; {name} accepts {', '.join(modes)}")
    annotations = Path(annotations).expanduser()
    if not annotations.exists():
        raise FileNotFoundError(f"{name}: annotations not found: {annotations}")
    answer_texts = read_answers(answers, benchmark=name)
    keep = read_question_ids(questions) if questions is not None else None
    result = scorer(answer_texts, annotations, mode, keep)

    scored = {row["question_id"] for row in result.per_question}
    extra = [qid for qid in answer_texts if qid not in scored]
    if answer_texts and len(extra) == len(answer_texts):
        raise ValueError(f"{name}: none of the {len(answer_texts)} answers in {answers} is a question of "
                         f"{annotations} (first answer id {extra[0]!r})")
    summary = {"benchmark": name, "mode": mode, **result.summary, "n": len(result.per_question),
               "missing": sum(row["prediction"] is None for row in result.per_question), "extra": len(extra),
               "answers": str(answers), "annotations": str(annotations)}
    if out_dir is not None:
        write_outputs(out_dir, name, ScoreResult(summary, result.per_question))
    return summary


def write_outputs(out_dir: str | Path, name: str, result: ScoreResult) -> tuple[Path, Path]:
    """{name}_scores.jsonl and {name}_summary.json in out_dir; returns their paths."""
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    scores_path, summary_path = out_dir / f"{name}_scores.jsonl", out_dir / f"{name}_summary.json"
    with open(scores_path, "w", encoding="utf-8") as f:
        for row in result.per_question:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary_path.write_text(json.dumps(result.summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return scores_path, summary_path


__all__ = ["SCORERS", "ScoreResult", "read_answers", "read_question_ids", "score_answers", "write_outputs"]
