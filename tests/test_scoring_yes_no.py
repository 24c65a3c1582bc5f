"""GQA exact match, POPE yes/no metrics and MME acc + acc+, with hand-computed expectations."""

from __future__ import annotations

import json

import pytest
from scoring_helpers import FIXTURES, write_answers

from reasonclip_llava.evaluation.scoring import score_answers
from reasonclip_llava.evaluation.scoring.gqa import llava_gqa_answer, lmms_eval_gqa_answer
from reasonclip_llava.evaluation.scoring.mme import mme_yes_no
from reasonclip_llava.evaluation.scoring.pope import pope_metrics, pope_yes_no

GQA_ANSWERS = {"201307251": "No.", "201640614": "The table", "202225914": "left!", "20968045": "White"}


def test_gqa_normalizers():
    assert llava_gqa_answer("No..") == "no"          # rstrip('.') removes every trailing period
    assert llava_gqa_answer("left!") == "left!"
    assert lmms_eval_gqa_answer("Left!") == "left"
    assert lmms_eval_gqa_answer("t-shirt") == "tshirt"  # punctuation inside words goes too


def test_gqa_official_and_lmms_eval(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", GQA_ANSWERS)
    annotations = FIXTURES / "gqa" / "testdev_balanced_questions.json"
    official = score_answers("GQA", answers, annotations)
    # "No." -> no (right); "the table" != table; "left!" != left; "White" -> white (right): 2/4
    assert official["accuracy"] == pytest.approx(50.0)
    # verify: 1/1; query: 1/3. semantic: global 1/1, obj 0/1, rel 0/1, attr 1/1
    assert official["per_structural_type"] == pytest.approx({"verify": 100.0, "query": 100 / 3})
    assert official["per_semantic_type"] == pytest.approx({"global": 100.0, "obj": 0.0, "rel": 0.0, "attr": 100.0})
    lmms = score_answers("gqa", answers, annotations, mode="evalai")
    assert lmms["accuracy"] == pytest.approx(75.0)  # "left!" -> left is right too: 3/4


@pytest.mark.parametrize("text, expected", [
    ("Yes, there is a snowboard.", "yes"),
    ("No, there is no car.", "no"),
    ("There is not a dog in the image.", "no"),
    ("I think so. No doubt.", "yes"),   # only the first sentence counts
    ("NO", "yes"),                       # LLaVA's word test is case-sensitive: 'No', 'no', 'not'
    ("There is nothing.", "yes"),        # 'nothing' is not a no-word
    ("no", "no"),
])
def test_pope_yes_no(text, expected):
    assert pope_yes_no(text) == expected


def test_pope_metrics_ten_items(tmp_path):
    adversarial = {
        "adversarial/1": "Yes, there is a snowboard.",  # label yes -> TP
        "adversarial/2": "No",                          # no  -> TN
        "adversarial/3": "There is not a dog in the image.",  # yes -> FN
        "adversarial/4": "Yes",                         # no  -> FP
        "adversarial/5": "yes",                         # yes -> TP
        "adversarial/6": "No, there is no car.",        # no  -> TN
        "adversarial/7": "I think so. No doubt.",       # yes -> TP
        "adversarial/8": "NO",                          # no  -> FP (read as yes)
        "adversarial/9": "Yes.",                        # yes -> TP
        "adversarial/10": "There is nothing.",          # no  -> FP
    }
    answers = write_answers(tmp_path / "a.jsonl", {**adversarial, "random/1": "Yes"})
    summary = score_answers("pope", answers, FIXTURES / "pope")
    adv = summary["per_split"]["adversarial"]
    # TP 4, FP 3, TN 2, FN 1: acc 6/10, precision 4/7, recall 4/5, F1 2PR/(P+R) = 2/3, yes-ratio 7/10
    assert (adv["tp"], adv["fp"], adv["tn"], adv["fn"]) == (4, 3, 2, 1)
    assert adv["accuracy"] == pytest.approx(60.0)
    assert adv["precision"] == pytest.approx(400 / 7)
    assert adv["recall"] == pytest.approx(80.0)
    assert adv["f1"] == pytest.approx(200 / 3)
    assert adv["yes_ratio"] == pytest.approx(70.0)
    # random: "Yes" on a yes (TP), the "no" question unanswered: acc 1/2, P = R = F1 = 1, yes-ratio 1/2
    rnd = summary["per_split"]["random"]
    assert (rnd["accuracy"], rnd["precision"], rnd["recall"], rnd["f1"], rnd["yes_ratio"]) == pytest.approx(
        (50.0, 100.0, 100.0, 100.0, 50.0))
    assert summary["accuracy"] == pytest.approx(55.0)           # (60 + 50) / 2
    assert summary["f1"] == pytest.approx((200 / 3 + 100) / 2)
    assert summary["missing"] == 1


def test_pope_metrics_without_positive_predictions():
    metrics = pope_metrics(["no", "no"], ["yes", "no"])
    assert (metrics["precision"], metrics["recall"], metrics["f1"], metrics["accuracy"]) == (0.0, 0.0, 0.0, 50.0)


def test_pope_single_split_file(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", {"random/1": "yes", "random/2": "no"})
    summary = score_answers("pope", answers, FIXTURES / "pope" / "coco_pope_random.json")
    assert list(summary["per_split"]) == ["random"] and summary["accuracy"] == 100.0


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"), ("no", "no"), ("yes, it is", "yes"), ("Not really", "no"),  # "not " holds "no"
    ("I am not sure", "other"), ("", "other"), ("None of them", "no"),
])
def test_mme_yes_no(text, expected):
    assert mme_yes_no(text) == expected


MME_ANSWERS = {
    "existence/000000006040.jpg/0": "Yes",                 # gt yes: right
    "existence/000000006040.jpg/1": "No, there is not.",   # gt no: right
    "existence/000000018150.jpg/0": "Yes",                 # gt yes: right
    "existence/000000018150.jpg/1": "Yes",                 # gt no: wrong
    "artwork/10002.jpg/0": "yes, it is",                   # gt yes: right
    "artwork/10002.jpg/1": "I am not sure",                # gt no: other (wrong)
    "artwork/10049.jpg/0": "Not really",                   # gt yes: read as no (wrong)
    # artwork/10049.jpg/1 unanswered: wrong
    "commonsense_reasoning/0001.png/0": "Yes",
    "commonsense_reasoning/0001.png/1": "no",
}


@pytest.mark.parametrize("layout", ["MME_Benchmark_release_version", "eval_tool/Your_Results"])
def test_mme_acc_plus(tmp_path, layout):
    answers = write_answers(tmp_path / "a.jsonl", MME_ANSWERS)
    summary = score_answers("mme", answers, FIXTURES / "mme" / layout)
    tasks = summary["per_subtask"]
    # existence: acc 3/4 = 75, acc+ 1/2 images = 50 -> 125
    assert (tasks["existence"]["acc"], tasks["existence"]["acc_plus"]) == pytest.approx((75.0, 50.0))
    # artwork: acc 1/4 = 25, acc+ 0/2 -> 25
    assert tasks["artwork"]["score"] == pytest.approx(25.0) and tasks["artwork"]["other"] == 2
    # commonsense_reasoning: 2/2 and 1/1 -> 200
    assert tasks["commonsense_reasoning"]["score"] == pytest.approx(200.0)
    assert summary["perception"] == pytest.approx(150.0)   # 125 + 25
    assert summary["cognition"] == pytest.approx(200.0)
    assert summary["score"] == pytest.approx(150.0) and summary["total"] == pytest.approx(350.0)
    assert "OCR" in summary["subtasks_missing"] and summary["missing"] == 1


def test_mme_bad_answer_in_annotations(tmp_path):
    results = tmp_path / "Your_Results"
    results.mkdir()
    (results / "count.txt").write_text("1.jpg\tHow many? Please answer yes or no.\tTwo\n")
    answers = write_answers(tmp_path / "a.jsonl", {"count/1.jpg/0": "yes"})
    with pytest.raises(ValueError, match="count.txt.*'Two', expected Yes or No"):
        score_answers("mme", answers, results)


def test_out_dir_rows_name_the_parse(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", MME_ANSWERS)
    score_answers("mme", answers, FIXTURES / "mme" / "MME_Benchmark_release_version", out_dir=tmp_path / "o")
    rows = {json.loads(line)["question_id"]: json.loads(line)
            for line in (tmp_path / "o" / "mme_scores.jsonl").read_text().splitlines()}
    assert rows["artwork/10049.jpg/0"]["parsed"] == "no" and rows["artwork/10049.jpg/1"]["prediction"] is None
    assert json.loads((tmp_path / "o" / "mme_summary.json").read_text())["score"] == pytest.approx(150.0)
