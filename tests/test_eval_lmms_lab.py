"""The VQA benchmarks read from lmms-lab parquet folders (as lmms-eval downloads them) and from the releases."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lmms_lab_fixtures import SPLITS, rows_for, write_lmms_lab
from reasonclip_llava.evaluation.benchmarks import SHORT_ANSWER_PROMPT, load_questions, read_items
from reasonclip_llava.evaluation.scoring import score_answers

ALL = tuple(SPLITS)


@pytest.mark.parametrize("name", ALL)
def test_parquet_folder_loads_with_images_written_once(name, tmp_path):
    data = write_lmms_lab(name, tmp_path)
    rows, _ = rows_for(name)
    questions = load_questions(name, data, tmp_path / "images")
    expected = {"mmbench": 3 * len(rows), "seedbench_img": 3}.get(name, len(rows))  # MMBench: + rotations; SEED: images only
    assert len(questions) == expected
    for question in questions:
        assert Image.open(question.image).size == (24, 20)
        assert question.image.startswith(str((tmp_path / "images" / name).resolve()))
    again = load_questions(name, data, tmp_path / "images")
    assert [q.image for q in again] == [q.image for q in questions]


def test_prompts_llava_and_lmms_eval(tmp_path):
    data = write_lmms_lab("textvqa", tmp_path)
    llava = read_items("textvqa", data)[0].prompt
    lmms = read_items("textvqa", data, prompts="lmms_eval")[0].prompt
    assert llava == f"what does the sign say?\n{SHORT_ANSWER_PROMPT}"
    assert lmms == f"What does the sign say?\n{SHORT_ANSWER_PROMPT}"  # lmms-eval capitalizes TextVQA questions
    mme = read_items("mme", write_lmms_lab("mme", tmp_path), prompts="lmms_eval")[0].prompt
    assert mme == f"Is it so 0?\n{SHORT_ANSWER_PROMPT}"  # " Please answer yes or no." replaced by the post prompt
    with pytest.raises(ValueError, match="lmms-eval prompts need the lmms-lab parquet input"):
        read_items("pope", _pope_release(tmp_path), prompts="lmms_eval")


def _pope_release(tmp_path):
    path = tmp_path / "release" / "coco_pope_random.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "yes"}) + "\n")
    return path


def test_official_scores_are_the_same_from_parquet_and_release(tmp_path):
    """POPE from both layouts gives the same official numbers (first-sentence no/not rule)."""
    data = write_lmms_lab("pope", tmp_path)
    rows, predictions = rows_for("pope")
    items = read_items("pope", data)
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": item.question_id, "text": p}) + "\n" for item, p in zip(items, predictions)))
    summary = score_answers("pope", answers, data)
    assert summary["mode"] == "official"
    parsed = ["yes", "no", "yes", "no", "no", "yes"]  # "No, there is not." -> no; " YES " -> yes
    labels = [r["answer"] for r in rows]
    assert summary["accuracy"] == pytest.approx(100 * sum(p == t for p, t in zip(parsed, labels)) / len(rows))


def test_vqav2_official_from_parquet(tmp_path):
    data = write_lmms_lab("vqav2", tmp_path)
    rows, predictions = rows_for("vqav2")
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": r["question_id"], "text": p}) + "\n" for r, p in zip(rows, predictions)))
    summary = score_answers("vqav2", answers, data)
    # question 2: ten identical "Yes" and the prediction "yes": the official scorer does not normalize -> 0
    assert summary["n"] == 5 and summary["per_answer_type"]["yes/no"] == 0.0


def test_parquet_of_another_benchmark_is_one_line(tmp_path):
    pope = write_lmms_lab("pope", tmp_path)
    with pytest.raises(ValueError, match=r"^mme: .*test-00000-of-00001\.parquet is the lmms-lab parquet of pope; expected lmms-lab/MME parquet"):
        read_items("mme", pope)
    rclip = tmp_path / "rclip" / "v1-00000-of-00001.parquet"
    rclip.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([{"id": "1", "sets": [{"tag": "S", "gt": "a", "neg": ["b"] * 4}]}]), rclip)
    with pytest.raises(ValueError, match=r"^vqav2: .* is not an lmms-lab parquet \(id, sets\); expected lmms-lab/VQAv2") as error:
        read_items("vqav2", rclip.parent)
    assert "\n" not in str(error.value)


def test_folder_that_is_neither_layout_says_what_was_expected(tmp_path):
    (tmp_path / "empty_chartqa").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^chartqa: .*empty_chartqa is neither the original release "
                                                 r"\(test_human\.json / test_augmented\.json\) nor the lmms-lab/ChartQA parquet"):
        read_items("chartqa", tmp_path / "empty_chartqa")


def test_lmms_eval_mode_needs_the_parquet_layout(tmp_path):
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"question_id": "random/1", "text": "yes"}) + "\n")
    with pytest.raises(ValueError, match="lmms_eval scores the lmms-lab parquet layout"):
        score_answers("pope", answers, _pope_release(tmp_path), mode="lmms_eval")


def test_whole_hub_repo_reads_the_config_lmms_eval_uses(tmp_path):
    """lmms-lab/ScienceQA holds ScienceQA-FULL and ScienceQA-IMG; scienceqa_img reads the IMG config only."""
    repo = tmp_path / "ScienceQA"
    write_lmms_lab("scienceqa_img", tmp_path)
    repo.mkdir()
    (tmp_path / "scienceqa_img" / "data").rename(repo / "ScienceQA-IMG")
    full = repo / "ScienceQA-FULL"
    full.mkdir()
    rows, _ = rows_for("scienceqa_img")
    pq.write_table(pa.Table.from_pylist(rows * 3), full / "test-00000-of-00001.parquet")
    assert len(read_items("scienceqa_img", repo)) == len(rows)
