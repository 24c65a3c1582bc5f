"""Multiple choice (ScienceQA, MMBench circular, MMVP pairs, AI2D, SEED-Bench-IMG) and ChartQA relaxed
accuracy, with hand-computed expectations."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from scoring_helpers import FIXTURES, write_answers

from reasonclip_llava.evaluation.benchmarks import load_questions
from reasonclip_llava.evaluation.scoring import read_answers, score_answers
from reasonclip_llava.evaluation.scoring.chartqa import relaxed_correctness
from reasonclip_llava.evaluation.scoring.choice import extract_choice, scienceqa_letter

ANIMALS = ["cat", "dog", "horse", "cow"]


@pytest.mark.parametrize("text, n, expected", [
    ("B", 2, "B"),
    (" C ", 4, "C"),
    ("E", 2, None),                                  # a letter beyond the problem's choices is FAILED
    ("A. cat", 3, "A"),
    ("A.cat", 3, None),                              # needs "X. "
    ("The answer is B.", 2, "B"),
    ("The answer is B. The answer is A.", 2, None),  # must be found exactly once
    ("I believe the answer is C", 4, None),          # case-sensitive "The answer is"
    ("b", 2, None),
])
def test_scienceqa_letter(text, n, expected):
    assert scienceqa_letter(text, n) == expected


@pytest.mark.parametrize("text, expected", [
    ("A", "A"), ("(B)", "B"), ("C.", "C"), ("d", "D"), ("B. dog", "B"), ("(c) horse", "C"),
    ("The answer is D", "D"), ("Answer: B", "B"), ("I choose C because", "C"),
    ("A dog is shown here", "B"),  # a lone 'A' in a sentence is the article; the option text decides
    ("cow", "D"), ("A or B", None), ("E", None), ("", None), ("a horse or a cow", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text, 4, ANIMALS) == expected


SQA_ANSWERS = {"1": "B", "2": "A. cat", "3": "I believe the answer is C", "4": "The answer is A."}


def test_scienceqa_all_and_img(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", SQA_ANSWERS)
    full = score_answers("scienceqa", answers, FIXTURES / "scienceqa")
    # 1 right, 2 right (no image), 3 FAILED, 4 right: 3/4; with image (1, 3, 4): 2/3
    assert full["accuracy"] == pytest.approx(75.0)
    assert full["img_accuracy"] == pytest.approx(200 / 3) and full["n_img"] == 3
    assert full["per_subject"] == pytest.approx({"natural science": 100.0, "language science": 100.0,
                                                 "social science": 0.0})
    img = score_answers("ScienceQA-IMG", answers, FIXTURES / "scienceqa" / "problems.json")
    assert img["accuracy"] == pytest.approx(200 / 3) and (img["n"], img["extra"]) == (3, 1)


MMBENCH_ANSWERS = {
    "0": "B", "1000000": "A",                                  # 2 options, answer B; rotated once: A
    "1": "A", "1000001": "D", "2000001": "C", "3000001": "A",  # answer A; rotations need D, C, B: last wrong
    "2": "C. left of", "1000002": "B", "2000002": "A",         # answer C; rotations need B, A
}


def test_mmbench_circular(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", MMBENCH_ANSWERS)
    summary = score_answers("mmbench", answers, FIXTURES / "mmbench" / "mmbench_dev.tsv")
    # question 0 right in both rotations, 1 wrong in rotation 3, 2 right in all three: 2/3
    assert summary["circular"] is True and summary["n_questions"] == 3 and summary["n"] == 9
    assert summary["accuracy"] == pytest.approx(200 / 3)
    assert summary["accuracy_single_pass"] == pytest.approx(100.0)
    assert summary["per_category"] == pytest.approx({"attribute_recognition": 50.0, "spatial_relationship": 100.0})


def test_mmbench_llava_round_ids(tmp_path):
    # LLaVA's --all-rounds answers carry the original index and a round_id
    path = tmp_path / "llava.jsonl"
    with open(path, "w") as f:
        for qid, text in MMBENCH_ANSWERS.items():
            f.write(json.dumps({"question_id": int(qid) % 1_000_000, "round_id": int(qid) // 1_000_000,
                                "text": text}) + "\n")
    assert read_answers(path) == MMBENCH_ANSWERS
    summary = score_answers("mmbench", path, FIXTURES / "mmbench" / "mmbench_dev.tsv")
    assert summary["accuracy"] == pytest.approx(200 / 3)


def test_mmbench_single_pass_when_no_rotation_answered(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", {"0": "B", "1": "A", "2": "B"})
    summary = score_answers("mmbench", answers, FIXTURES / "mmbench" / "mmbench_dev.tsv")
    assert summary["circular"] is False and summary["n"] == 3
    assert summary["accuracy"] == pytest.approx(200 / 3)  # question 2's answer is C


def test_mmbench_tsv_with_rotated_rows(tmp_path):
    # legacy TSV: row 1000007 is row 7 with its options swapped (answer B there)
    answers = write_answers(tmp_path / "a.jsonl", {"7": "A", "1000007": "A"})
    summary = score_answers("mmbench", answers, FIXTURES / "mmbench" / "mmbench_dev_legacy_circular.tsv")
    assert summary["circular"] is True and summary["accuracy"] == 0.0
    assert summary["accuracy_single_pass"] == 100.0


def test_mmbench_questions_rotate_and_decode_images(tmp_path):
    questions = {q.question_id: q for q in load_questions("mmbench", FIXTURES / "mmbench" / "mmbench_dev.tsv",
                                                          tmp_path / "cache")}
    assert sorted(questions, key=int) == ["0", "1", "2", "1000000", "1000001", "1000002", "2000001", "2000002",
                                          "3000001"]
    assert questions["1000002"].prompt == ("Look at the picture.\nWhere is the cup relative to the plate?\n"
                                           "A. below\nB. left of\nC. above\n"
                                           "Answer with the option's letter from the given choices directly.")
    assert questions["0"].prompt.startswith("What is the color of the ball?\nA. red\nB. blue\n")  # hint 'nan'
    assert questions["1000002"].image == questions["2"].image
    with Image.open(questions["2"].image) as image:
        assert image.size == (4, 3)
    legacy = load_questions("mmbench", FIXTURES / "mmbench" / "mmbench_dev_legacy_circular.tsv", tmp_path / "c2")
    assert [q.question_id for q in legacy] == ["7", "1000007"]
    assert legacy[1].image == legacy[0].image  # the rotated row's image cell is "7", a reference to row 7


def test_mmvp_pairs(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", {"1": "A", "2": "(b) Closed", "3": "Left", "4": "A"})
    summary = score_answers("mmvp", answers, FIXTURES / "mmvp" / "Questions.csv")
    # 1 right, 2 right, 3 right ("Left" is option A), 4 wrong: pairs (1,2) right, (3,4) wrong
    assert summary["accuracy"] == pytest.approx(50.0) and summary["n_pairs"] == 2
    assert summary["question_accuracy"] == pytest.approx(75.0)
    subset = tmp_path / "q.jsonl"
    subset.write_text('{"question_id": "1"}\n{"question_id": "2"}\n{"question_id": "3"}\n')
    partial = score_answers("mmvp", answers, FIXTURES / "mmvp", questions=subset)
    assert partial["accuracy"] == 100.0 and partial["incomplete_pairs"] == 1


def test_ai2d_test_split(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", {"0.png-0": "D", "0.png-1": "face", "2.png-0": "(B)",
                                                  "1.png-0": "A"})
    summary = score_answers("ai2d", answers, FIXTURES / "ai2d")
    # 0.png-0 right (ears = D), 0.png-1 "face" is option A but the answer is D, 2.png-0 right; image 1 is
    # not in ai2d_test_ids.csv
    assert summary["accuracy"] == pytest.approx(200 / 3) and (summary["n"], summary["extra"]) == (3, 1)


def test_seedbench_img_question_types(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", {"101669": "A", "101670": "C", "101671": "D", "201001": "A"})
    summary = score_answers("seed-bench-img", answers, FIXTURES / "seedbench" / "SEED-Bench.json")
    # 2 of the 3 image questions right; the video question is not part of SEED-Bench-IMG
    assert summary["accuracy"] == pytest.approx(200 / 3) and summary["extra"] == 1
    assert summary["per_question_type"] == pytest.approx({"Instances Counting": 100.0, "Scene Understanding": 50.0})


@pytest.mark.parametrize("prediction, target, expected", [
    ("104.9", "100", True),   # 4.9% off
    ("105.1", "100", False),  # 5.1% off
    ("95.1", "100", True),
    ("94.9", "100", False),
    ("105", "100", True),     # exactly 5%
    ("50%", "0.5", True),     # a trailing % divides by 100
    ("0.0", "0", False),      # a zero target is compared as text
    ("0", "0", True),
    (" Yes ", "yes", True),
    ("1,000", "1000", False),  # not a float: exact text
])
def test_relaxed_correctness(prediction, target, expected):
    assert relaxed_correctness(prediction, target) is expected


def test_chartqa_splits(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", {"human/0": "104.9", "human/1": "210.2", "human/2": "yes ",
                                                  "human/3": "0.0", "augmented/0": "50%", "augmented/1": "germany"})
    summary = score_answers("chartqa", answers, FIXTURES / "chartqa" / "test")
    # human: 104.9 vs 100 right, 210.2 vs 200 (5.1%) wrong, yes right, 0.0 vs 0 wrong: 2/4
    # augmented: 50% = 0.5 right, germany right: 2/2
    assert summary["per_split"] == pytest.approx({"human": 50.0, "augmented": 100.0})
    assert summary["accuracy"] == pytest.approx(400 / 6)
    human_only = score_answers("chartqa", answers, FIXTURES / "chartqa" / "test" / "test_human.json")
    assert human_only["accuracy"] == pytest.approx(50.0) and human_only["extra"] == 2
