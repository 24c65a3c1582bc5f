"""Benchmark readers: released formats -> VQAQuestion with LLaVA's prompts; one-line errors naming the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from scoring_helpers import FIXTURES, write_answers

from reasonclip_llava.evaluation.benchmarks import (
    BENCHMARKS,
    MULTIPLE_CHOICE_PROMPT,
    SHORT_ANSWER_PROMPT,
    canonical_benchmark,
    load_questions,
    parse_mmvp_options,
)
from reasonclip_llava.evaluation.scoring import SCORERS, read_answers, score_answers

# name -> (data, images, number of questions)
CASES = {
    "vqav2": ("vqav2/v2_OpenEnded_mscoco_val2014_questions.json", "vqav2/val2014", 8),
    "gqa": ("gqa/testdev_balanced_questions.json", "gqa/images", 4),
    "textvqa": ("textvqa/TextVQA_0.5.1_val.json", "textvqa/train_images", 3),
    "vizwiz": ("vizwiz/val.json", "vizwiz/val", 2),
    "pope": ("pope", "pope/val2014", 12),
    "mme": ("mme/MME_Benchmark_release_version", "mme/MME_Benchmark_release_version", 10),
    "scienceqa": ("scienceqa", "scienceqa/images/test", 4),
    "scienceqa_img": ("scienceqa", "scienceqa/images/test", 3),
    "mmbench": ("mmbench/mmbench_dev.tsv", None, 9),
    "mmvp": ("mmvp/Questions.csv", "mmvp/MMVP Images", 4),
    "ai2d": ("ai2d", "ai2d/images", 3),
    "chartqa": ("chartqa/test", "chartqa/test/png", 6),
    "seedbench_img": ("seedbench/SEED-Bench.json", "seedbench/SEED-Bench-image", 3),
}


def test_registry_names():
    assert set(BENCHMARKS) == set(SCORERS) == set(CASES)
    assert canonical_benchmark("VQAv2") == "vqav2"
    assert canonical_benchmark(" SEED-Bench-IMG ") == "seedbench_img"
    assert canonical_benchmark("ScienceQA-IMG") == "scienceqa_img"
    with pytest.raises(ValueError, match="unknown benchmark 'okvqa'; known: ai2d, chartqa"):
        canonical_benchmark("okvqa")


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_benchmark_loads(name, tmp_path):
    data, images, count = CASES[name]
    questions = load_questions(name.upper(), FIXTURES / data, FIXTURES / images if images else tmp_path)
    assert len(questions) == count
    assert len({q.question_id for q in questions}) == count
    for q in questions:
        assert "<image>" not in q.prompt and q.max_new_tokens == 16
        assert q.prompt.endswith(MULTIPLE_CHOICE_PROMPT) or q.prompt.endswith(SHORT_ANSWER_PROMPT)
        if q.image is not None:
            assert Path(q.image).is_absolute() and Path(q.image).is_file()
    # every question id is one the scorer knows: answering all with "A" scores without 'extra'
    answers = write_answers(tmp_path / "a.jsonl", {q.question_id: "A" for q in questions})
    annotations = "vqav2/v2_mscoco_val2014_annotations.json" if name == "vqav2" else data
    summary = score_answers(name, answers, FIXTURES / annotations)
    assert (summary["n"], summary["missing"], summary["extra"]) == (count, 0, 0)


def test_prompts_follow_llava():
    vqav2 = load_questions("vqav2", FIXTURES / CASES["vqav2"][0], FIXTURES / "vqav2/val2014")
    assert vqav2[0].question_id == "42000"
    assert vqav2[0].prompt == "What color is the dog?\nAnswer the question using a single word or phrase."
    assert vqav2[0].image.endswith("val2014/COCO_val2014_000000000042.jpg")
    vizwiz = load_questions("vizwiz", FIXTURES / "vizwiz/val.json", FIXTURES / "vizwiz/val")
    assert vizwiz[1].question_id == "VizWiz_val_00000001.jpg"
    assert vizwiz[1].prompt == ("What is this?\nWhen the provided information is insufficient, respond with "
                                "'Unanswerable'.\nAnswer the question using a single word or phrase.")
    sqa = {q.question_id: q for q in load_questions("scienceqa", FIXTURES / "scienceqa",
                                                    FIXTURES / "scienceqa/images/test")}
    assert sqa["2"].image is None  # text-only question
    assert sqa["2"].prompt == ("Context: Read the guide words.\nWhich word would you find on a dictionary page?\n"
                               "A. cat\nB. dog\nC. emu\n" + MULTIPLE_CHOICE_PROMPT)
    assert sqa["1"].prompt.startswith("Which object has more thermal energy?\nA. a cold chest\n")  # no empty context
    pope = load_questions("pope", FIXTURES / "pope/coco_pope_random.json", FIXTURES / "pope/val2014")
    assert [q.question_id for q in pope] == ["random/1", "random/2"]
    assert pope[0].prompt == "Is there a person in the image?\nAnswer the question using a single word or phrase."


def test_textvqa_ocr_option():
    data, images = FIXTURES / "textvqa/TextVQA_0.5.1_val.json", FIXTURES / "textvqa/train_images"
    plain = load_questions("textvqa", data, images)
    assert plain[0].prompt == "what is the brand of this camera?\nAnswer the question using a single word or phrase."
    ocr = load_questions("textvqa", data, images, textvqa_ocr=FIXTURES / "textvqa/TextVQA_Rosetta_OCR_v0.2_val.json")
    assert ocr[0].prompt == ("what is the brand of this camera?\nReference OCR token: dakota, digital\n"
                             "Answer the question using a single word or phrase.")
    assert "Reference OCR token: \n" in ocr[1].prompt  # an image without OCR tokens


def test_mme_layouts_agree():
    images = FIXTURES / "mme/MME_Benchmark_release_version"
    release = load_questions("mme", images, images)
    results = load_questions("mme", FIXTURES / "mme/eval_tool/Your_Results", images)
    def fields(questions):
        return [(q.question_id, q.image, q.prompt) for q in questions]

    assert fields(release) == fields(results)
    artwork = next(q for q in release if q.question_id == "artwork/10002.jpg/1")
    assert artwork.image.endswith("artwork/images/10002.jpg")
    assert artwork.prompt == ("Is this artwork created by gerard? Please answer yes or no.\n"
                              "Answer the question using a single word or phrase.")


def test_mmvp_options():
    assert parse_mmvp_options("(a) Open (b) Closed") == ["Open", "Closed"]
    assert parse_mmvp_options("(a) Yes, it is (b) No (c) Maybe") == ["Yes, it is", "No", "Maybe"]


def test_check_images(tmp_path):
    data = FIXTURES / CASES["gqa"][0]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_questions("gqa", data, tmp_path / "nowhere")
    (tmp_path / "imgs").mkdir()
    shutil.copy(FIXTURES / "gqa/images/n161313.jpg", tmp_path / "imgs")
    with pytest.raises(FileNotFoundError, match=r"gqa: image of question 201640614 not found: .*n235859\.jpg"):
        load_questions("gqa", data, tmp_path / "imgs")
    unchecked = load_questions("gqa", data, tmp_path / "nowhere", check_images=False)
    assert unchecked[0].image == str((tmp_path / "nowhere" / "n161313.jpg").resolve())


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="vqav2: data not found: .*missing.json"):
        load_questions("vqav2", tmp_path / "missing.json", tmp_path)
    bad_json = _write(tmp_path / "bad.json", "{not json")
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON"):
        load_questions("gqa", bad_json, tmp_path, check_images=False)
    no_question = _write(tmp_path / "q.json", json.dumps({"data_subtype": "val2014",
                                                          "questions": [{"question_id": 7, "image_id": 1}]}))
    with pytest.raises(ValueError, match=r"q.json: row 7 has no 'question'"):
        load_questions("vqav2", no_question, tmp_path, check_images=False)
    no_split = _write(tmp_path / "questions.json", json.dumps({"questions": []}))
    with pytest.raises(ValueError, match="cannot tell the COCO split"):
        load_questions("vqav2", no_split, tmp_path, check_images=False)
    pope = _write(tmp_path / "coco_pope_random.json",
                  '{"question_id": 1, "image": "x.jpg", "text": "Is there a cat?", "label": "yes"}\n{broken\n')
    with pytest.raises(ValueError, match=r"coco_pope_random.json:2: not valid JSON"):
        load_questions("pope", pope, tmp_path, check_images=False)
    pope.write_text('{"question_id": 1, "image": "x.jpg", "text": "Is there a cat?", "label": "maybe"}\n')
    with pytest.raises(ValueError, match="row 1 has label 'maybe'"):
        load_questions("pope", pope, tmp_path, check_images=False)
    with pytest.raises(FileNotFoundError, match="no subtask folders"):
        load_questions("mme", tmp_path, tmp_path, check_images=False)


def test_choice_reader_errors(tmp_path):
    tsv = _write(tmp_path / "mmb.tsv", "index\tquestion\tA\tB\tanswer\n3\tWhich?\tx\ty\tC\n")
    with pytest.raises(ValueError, match="row 3 has answer 'C', not one of its options"):
        load_questions("mmbench", tsv, tmp_path / "cache")
    tsv.write_text("index\tquestion\tA\tB\tanswer\timage\n3\tWhich?\tx\ty\tA\t\n")
    with pytest.raises(ValueError, match="row 3 has no image"):
        load_questions("mmbench", tsv, tmp_path / "cache")
    csv_path = _write(tmp_path / "Questions.csv",
                      "Index,Question,Options,Correct Answer\n1,Which?,Open or closed,(a)\n")
    with pytest.raises(ValueError, match="row 1 has options 'Open or closed'"):
        load_questions("mmvp", csv_path, tmp_path, check_images=False)
    _write(tmp_path / "sqa/problems.json", json.dumps({"1": {"question": "q", "choices": ["a", "b"], "answer": 0}}))
    _write(tmp_path / "sqa/pid_splits.json", json.dumps({"test": ["1", "9"]}))
    with pytest.raises(ValueError, match="test problem 9 is missing"):
        load_questions("scienceqa", tmp_path / "sqa", tmp_path, check_images=False)


def test_read_answers_formats_and_errors(tmp_path):
    write_answers(tmp_path / "a.jsonl", {"1": "yes"}, key="answer")
    assert read_answers(tmp_path / "a.jsonl") == {"1": "yes"}
    _write(tmp_path / "b.jsonl", '{"question_id": 1, "text": "a"}\n\n{"question_id": 1, "text": "b"}\n')
    with pytest.raises(ValueError, match="question 1 is answered twice"):
        read_answers(tmp_path / "b.jsonl")
    _write(tmp_path / "c.jsonl", '{"question_id": 1, "text": "a"}\n{"question_id": 2, "text": \n')
    with pytest.raises(ValueError, match=r"c.jsonl:2: not valid JSON"):
        read_answers(tmp_path / "c.jsonl")
    _write(tmp_path / "d.jsonl", '{"question_id": 1, "score": 3}\n')
    with pytest.raises(ValueError, match="line 1 \\(question 1\\) has no 'text' or 'answer'"):
        read_answers(tmp_path / "d.jsonl")
    with pytest.raises(FileNotFoundError, match="answers file not found"):
        read_answers(tmp_path / "none.jsonl")


def test_score_answers_errors(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", {"random/1": "yes"})
    with pytest.raises(ValueError, match="pope: unknown mode 'evalai'; pope accepts official"):
        score_answers("pope", answers, FIXTURES / "pope", mode="evalai")
    with pytest.raises(FileNotFoundError, match="pope: annotations not found"):
        score_answers("pope", answers, tmp_path / "nothing")
    no_answers = write_answers(tmp_path / "b.jsonl", {"101669": "A"})
    tsv = _write(tmp_path / "test.tsv", "index\tquestion\tA\tB\n101669\tWhich?\tx\ty\n")
    with pytest.raises(ValueError, match="question 101669 has no answer"):
        score_answers("mmbench", no_answers, tsv)
