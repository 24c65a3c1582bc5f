"""VQA accuracy (VQAv2, TextVQA, VizWiz): normalization traps and hand-computed scores."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from scoring_helpers import FIXTURES, write_answers

from reasonclip_llava.evaluation.scoring import score_answers
from reasonclip_llava.evaluation.scoring.vqa_accuracy import (
    CONTRACTIONS,
    evalai_normalize,
    official_normalize,
    process_digit_article,
    process_punctuation,
    vqa_accuracy,
)

VQAV2 = FIXTURES / "vqav2"


def _llava_m4c():
    """LLaVA's m4c_evaluator.py (EvalAI processor), loaded without importing the llava package."""
    spec = importlib.util.find_spec("llava")
    if spec is None or spec.origin is None:
        pytest.skip("llava-torch is not installed")
    path = Path(spec.origin).parent / "eval" / "m4c_evaluator.py"
    module_spec = importlib.util.spec_from_file_location("llava_m4c_evaluator", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("text, expected", [
    ("yes.", "yes"),                 # a period not followed by a digit goes
    ("3.5", "3.5"),                  # ... one followed by a digit stays
    ("end. 4.5", "end 4.5"),
    ("hello, world", "hello world"),  # ',' next to a space is deleted
    ("a-b", "a b"),                  # '-' touching no space becomes a space
    ("x, y-z", "x y z"),             # each mark is judged on its own
    ("1,000", "1000"),               # digit-comma-digit: the comma is deleted ...
    ("1,000-2", "10002"),            # ... and so is every other mark of that text
    ("(yes)", " yes "),
    ("don't", "don't"),              # "'" is not one of the 21 marks
    ("what: now", "what: now"),      # nor is ':'
])
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Two Dogs", "2 dogs"),
    ("none", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),            # only none/zero..ten are mapped
    ("The dog", "dog"),
    ("an apple a day", "apple day"),
    ("dont", "don't"),
    ("youre", "you're"),
    ("Im", "im"),                    # the table's key is "Im": never matches a lowercased word
])
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


def test_contraction_table_is_the_official_one():
    # vqaEval.py's table has 120 entries; LLaVA's EvalAI processor carries the same table
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["dont"] == "don't" and CONTRACTIONS["Im"] == "I'm" and CONTRACTIONS["somebody'd"] == "somebodyd"
    assert CONTRACTIONS == _llava_m4c().EvalAIAnswerProcessor.CONTRACTIONS


def test_official_and_evalai_normalization():
    assert official_normalize("  A Frisbee.\n") == "frisbee"
    assert official_normalize("Hello, World!") == "hello world"
    assert official_normalize("What's up?") == "what's up"
    # EvalAI lowercases first, drops ',' and '?' outright and splits "'s"
    assert evalai_normalize("What's up?") == "what 's up"
    assert evalai_normalize("1,000") == "1000"


def test_evalai_normalize_matches_llava():
    processor = _llava_m4c().EvalAIAnswerProcessor()
    texts = ["Yes", "A Frisbee.", "1,000", "two dogs", "dont walk", "What's up?", "Hello, World!", "3.5 m",
             "none", "The Beach", "x-ray", "  tab\there ", "U.S.A.", "(left)", "rock & roll", "it's 5:30"]
    for text in texts:
        assert evalai_normalize(text) == processor(text), text


@pytest.mark.parametrize("agree, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_ten_choose_nine_average(agree, expected):
    # m humans agree: m subsets see m-1 of them, 10-m subsets see m; e.g. m=2: (2*1/3 + 8*2/3) / 10 = 0.6
    humans = ["cat"] * agree + ["dog"] * (10 - agree)
    assert vqa_accuracy("cat", humans) == pytest.approx(expected)


def test_leave_one_out_with_five_answers():
    # 2 of 5 agree: (2 * 1/3 + 3 * 2/3) / 5 = (8/3) / 5 = 0.5333...
    assert vqa_accuracy("cat", ["cat", "cat", "dog", "dog", "emu"]) == pytest.approx(8 / 15)


def test_identical_human_answers_are_not_normalized_in_official_mode():
    assert vqa_accuracy("Yes", ["yes"] * 10, "official") == 0.0
    assert vqa_accuracy("Yes", ["yes"] * 10, "evalai") == 1.0
    assert vqa_accuracy("beach", ["the beach"] * 10, "official") == 0.0
    assert vqa_accuracy("beach", ["the beach"] * 10, "evalai") == 1.0
    # one differing human answer switches normalization on: 9 "beach" after dropping "the"
    assert vqa_accuracy("beach", ["the beach"] * 9 + ["sand"], "official") == 1.0
    assert vqa_accuracy("yes\n", ["yes"] * 10, "official") == 1.0  # whitespace is always cleaned


def test_unknown_mode_and_empty_answers():
    with pytest.raises(ValueError, match="mode"):
        vqa_accuracy("a", ["a"], "strict")
    with pytest.raises(ValueError, match="human answer"):
        vqa_accuracy("a", [])


VQAV2_ANSWERS = {"42000": "Brown", "42001": "two", "73000": "Yes", "73001": "dont walk", "74000": "A Frisbee.",
                 "74001": "1,000", "75000": "Hello, world", "99999": "an answer to no question"}


def test_vqav2_official(tmp_path):
    answers = write_answers(tmp_path / "answers.jsonl", VQAV2_ANSWERS)
    summary = score_answers("VQAv2", answers, VQAV2 / "v2_mscoco_val2014_annotations.json", out_dir=tmp_path / "out")
    # per question: 42000 brown 2/10 -> .6; 42001 two=2, 4/10 -> 1; 73000 "Yes" vs 10x"yes" unnormalized -> 0;
    # 73001 dont->don't 3/10 -> .9; 74000 "a frisbee"/"frisbee" 2/10 -> .6; 74001 1,000->1000 3/10 -> .9;
    # 75000 "hello world" 3/10 -> .9; 75001 unanswered -> 0. Mean 4.9 / 8 = 61.25%
    assert summary["accuracy"] == pytest.approx(61.25)
    assert summary["per_answer_type"] == pytest.approx({"yes/no": 0.0, "number": 95.0, "other": 60.0})
    assert summary["per_question_type"]["what does the"] == pytest.approx(90.0)
    assert (summary["n"], summary["missing"], summary["extra"]) == (8, 1, 1)
    rows = [json.loads(line) for line in (tmp_path / "out" / "vqav2_scores.jsonl").read_text().splitlines()]
    assert {r["question_id"]: r["score"] for r in rows} == pytest.approx(
        {"42000": 0.6, "42001": 1.0, "73000": 0.0, "73001": 0.9, "74000": 0.6, "74001": 0.9, "75000": 0.9,
         "75001": 0.0})
    saved = json.loads((tmp_path / "out" / "vqav2_summary.json").read_text())
    assert saved["accuracy"] == pytest.approx(61.25) and saved["mode"] == "official"


def test_vqav2_evalai_mode(tmp_path):
    answers = write_answers(tmp_path / "answers.jsonl", VQAV2_ANSWERS)
    summary = score_answers("vqav2", answers, VQAV2 / "v2_mscoco_val2014_annotations.json", mode="evalai")
    # only 73000 changes: "Yes" -> "yes" matches 10/10 -> 1. Mean 5.9 / 8 = 73.75%
    assert summary["accuracy"] == pytest.approx(73.75)
    assert summary["per_answer_type"]["yes/no"] == pytest.approx(100.0)


def test_vqav2_results_json_and_question_subset(tmp_path):
    # the official VQA results format: a JSON list of {"question_id": int, "answer": str}
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"question_id": 42001, "answer": "2"}, {"question_id": 73000, "answer": "yes"}]))
    subset = tmp_path / "questions.jsonl"
    subset.write_text('{"question_id": 42001}\n{"question_id": 73000}\n{"question_id": 42000}\n')
    summary = score_answers("vqav2", results, VQAV2 / "v2_mscoco_val2014_annotations.json", questions=subset)
    # 42001: "2" 4/10 -> 1; 73000: "yes" == 10x"yes" -> 1; 42000 unanswered -> 0. 2/3
    assert summary["accuracy"] == pytest.approx(200 / 3)
    assert (summary["n"], summary["missing"]) == (3, 1)
    full = score_answers("vqav2", results, VQAV2 / "v2_mscoco_val2014_annotations.json",
                         questions=VQAV2 / "v2_OpenEnded_mscoco_val2014_questions.json")
    assert full["n"] == 8 and full["accuracy"] == pytest.approx(25.0)  # 2 / 8


TEXTVQA_ANSWERS = {"34602": "Dakota", "34603": "one", "34604": "stop"}


def test_textvqa_official_and_evalai(tmp_path):
    answers = write_answers(tmp_path / "answers.jsonl", TEXTVQA_ANSWERS)
    annotations = FIXTURES / "textvqa" / "TextVQA_0.5.1_val.json"
    # dakota 5/10 -> 1; one->1, 3/10 -> .9; "stop" vs 10x"STOP": official 0, evalai 1
    official = score_answers("textvqa", answers, annotations)
    assert official["accuracy"] == pytest.approx(190 / 3)
    assert official["per_answer_type"] == {}
    evalai = score_answers("textvqa", answers, annotations, mode="evalai")
    assert evalai["accuracy"] == pytest.approx(290 / 3) and evalai["mode"] == "evalai"


def test_textvqa_evalai_matches_llava_evaluator(tmp_path):
    annotations = FIXTURES / "textvqa" / "TextVQA_0.5.1_val.json"
    rows = json.loads(annotations.read_text())["data"]
    predictions = ["Dakota", "1", "stop"]
    evaluator = _llava_m4c().TextVQAAccuracyEvaluator()
    reference = evaluator.eval_pred_list([{"pred_answer": p, "gt_answers": r["answers"]}
                                          for p, r in zip(predictions, rows)])
    answers = write_answers(tmp_path / "a.jsonl", {str(r["question_id"]): p for p, r in zip(predictions, rows)})
    assert score_answers("textvqa", answers, annotations, mode="evalai")["accuracy"] == pytest.approx(100 * reference)


def test_vizwiz_unanswerable(tmp_path):
    answers = write_answers(tmp_path / "answers.jsonl", {"VizWiz_val_00000000.jpg": "Unanswerable",
                                                        "VizWiz_val_00000001.jpg": "coffee mug"})
    annotations = FIXTURES / "vizwiz" / "val.json"
    # 10x "unanswerable" are identical: official compares "Unanswerable" as is -> 0; "coffee mug" 3/10 -> .9
    official = score_answers("vizwiz", answers, annotations)
    assert official["accuracy"] == pytest.approx(45.0)
    assert official["per_answer_type"] == pytest.approx({"unanswerable": 0.0, "other": 90.0})
    evalai = score_answers("vizwiz", answers, annotations, mode="evalai")
    assert evalai["accuracy"] == pytest.approx(95.0)


def test_vqa_errors(tmp_path):
    annotations = VQAV2 / "v2_mscoco_val2014_annotations.json"
    answers = write_answers(tmp_path / "a.jsonl", {"1": "x"})
    with pytest.raises(ValueError, match="none of the 1 answers"):
        score_answers("vqav2", answers, annotations)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"annotations": [{"question_id": 5, "answer_type": "other"}]}))
    with pytest.raises(ValueError, match="row 5 has no 'answers'"):
        score_answers("vqav2", answers, broken)
    with pytest.raises(ValueError, match="accepts official, evalai"):
        score_answers("vqav2", answers, annotations, mode="strict")
    subset = tmp_path / "q.jsonl"
    subset.write_text('{"question_id": 123}\n')
    with pytest.raises(ValueError, match="question '123' of the questions file"):
        score_answers("vqav2", answers, annotations, questions=subset)
