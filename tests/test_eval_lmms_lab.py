"""The VQA benchmarks read from lmms-lab parquet folders (as lmms-eval downloads them) and from the releases."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lmms_lab_fixtures import DECOY_SPLITS, SPLITS, prompt_rows, rows_for, write_lmms_lab
from reasonclip_llava.evaluation.benchmarks import SHORT_ANSWER_PROMPT, load_questions, read_items
from reasonclip_llava.evaluation.lmms_lab import LAYOUTS
from reasonclip_llava.evaluation.scoring import score_answers

ALL = tuple(SPLITS)


def _summary(items) -> list[tuple]:
    return [(i.question_id, i.prompt, repr(i.answer)) for i in items]


@pytest.mark.parametrize("name", ALL)
def test_hub_shard_names_with_another_split_beside(name, tmp_path):
    """A whole-repo snapshot: the split in 2 hashed shards (val-00000-of-00002-<hash>.parquet) and another
    split with the same rows beside it. Only the evaluated split is read, as from one clean file."""
    clean = read_items(name, write_lmms_lab(name, tmp_path / "clean"))
    repo = write_lmms_lab(name, tmp_path / "hub", shards=2, hashed=True, decoy=True)
    names = sorted(p.name for p in repo.rglob("*.parquet"))
    assert any(n.startswith(f"{DECOY_SPLITS[SPLITS[name]]}-") for n in names)
    assert all(n.count("-") == 4 for n in names if "-of-00002-" in n)  # {split}-{i}-of-{n}-{hash}
    assert _summary(read_items(name, repo)) == _summary(clean)


def test_vizwiz_from_the_hub_snapshot_is_not_mixed_with_test(tmp_path):
    """The probe of the issue: val in 5 hashed shards, test rows beside it; the score is that of val alone."""
    rows, predictions = rows_for("vizwiz")
    repo = write_lmms_lab("vizwiz", tmp_path, shards=3, hashed=True, decoy=False)
    test = tmp_path / "vizwiz" / "data" / "test-00000-of-00001-0123456789abcdef.parquet"
    wrong = [dict(r, question_id=f"VizWiz_test_{k:08d}", answers=["nothing"] * 10) for k, r in enumerate(rows)]
    write_lmms_lab("vizwiz", tmp_path / "other", rows=wrong)
    (tmp_path / "other" / "vizwiz" / "data" / "val-00000-of-00001.parquet").rename(test)
    items = read_items("vizwiz", repo)
    assert [i.question_id for i in items] == [r["question_id"] for r in rows]


@pytest.mark.parametrize("name", ["vizwiz", "mme"])
def test_missing_shard_is_one_line_naming_the_files(name, tmp_path):
    repo = write_lmms_lab(name, tmp_path, shards=3, hashed=True)
    split = SPLITS[name]
    (second,) = (p for p in repo.rglob("*.parquet") if p.name.startswith(f"{split}-00001-of-00003"))
    second.unlink()
    with pytest.raises(ValueError, match=rf"^{name}: '{split}' in .*: shard\(s\) 00001 of 00003 missing \({split}-00000-of-00003-") as error:
        read_items(name, repo)
    assert "\n" not in str(error.value)


def test_files_whose_split_cannot_be_told_are_refused(tmp_path):
    repo = write_lmms_lab("pope", tmp_path)
    shard = next(repo.rglob("*.parquet"))
    shutil.copy(shard, shard.parent / "extra_rows.parquet")
    with pytest.raises(ValueError, match=r"^pope: cannot tell which split data/extra_rows\.parquet .* belong\(s\) to; lmms-eval reads 'test'"):
        read_items("pope", repo)
    (shard.parent / "extra_rows.parquet").rename(tmp_path / "mine.parquet")
    assert len(read_items("pope", tmp_path / "mine.parquet")) == len(rows_for("pope")[0])  # one file given is the split


def test_a_file_of_another_split_is_not_read_as_the_split(tmp_path):
    repo = write_lmms_lab("vizwiz", tmp_path, decoy=True)
    (val,) = repo.rglob("val-*.parquet")
    val.unlink()
    with pytest.raises(FileNotFoundError, match=r"^vizwiz: no 'val' shard under .* \(found split test\)"):
        read_items("vizwiz", repo)
    (test,) = repo.rglob("test-*.parquet")
    with pytest.raises(FileNotFoundError, match=r"no 'val' shard"):
        read_items("vizwiz", test)


def test_hub_converter_layout_split_folders(tmp_path):
    """refs/convert/parquet: default/{split}/0000.parquet."""
    repo = write_lmms_lab("pope", tmp_path, decoy=True)
    for path in list(repo.rglob("*.parquet")):
        split = path.name.split("-")[0]
        target = repo / "default" / split / "0000.parquet"
        target.parent.mkdir(parents=True)
        path.rename(target)
    assert len(read_items("pope", repo)) == len(rows_for("pope")[0])


@pytest.mark.parametrize("name", ALL)
def test_lmms_eval_prompts_equal_lmms_eval_doc_to_text(name, tmp_path):
    """The prompt of every question is what lmms-eval 0.7.3's task builds for llava_hf (its doc_to_text with
    the YAML's lmms_eval_specific_kwargs), on rows with the hard cases, read as lmms-eval reads them."""
    from lmms_eval_reference import hf_docs, reference_prompt

    rows = prompt_rows(name)
    data = write_lmms_lab(name, tmp_path, rows=rows)
    items = read_items(name, data, prompts="lmms_eval")
    shards = sorted((data / ("testdev_balanced_instructions" if name == "gqa" else "data")).glob("*.parquet"))
    docs = hf_docs(shards, tmp_path / "hf_cache")
    assert len(items) == len(docs) == len(rows)  # every row is asked once, none added (MMBench: no rotations)
    ours = {item.meta["doc_id"]: item.prompt for item in items}
    theirs = {k: reference_prompt(name, doc) for k, doc in enumerate(docs)}
    assert ours == theirs
    assert len(set(theirs.values())) == len(rows)


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
    with pytest.raises(ValueError, match=r"^mme: .*test-00000-of-00001\.parquet is the lmms-lab parquet of pope; "
                                         r"expected lmms-lab-encoder/MME, formerly lmms-lab/MME parquet"):
        read_items("mme", pope)
    rclip = tmp_path / "rclip" / "v1-00000-of-00001.parquet"
    rclip.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([{"id": "1", "sets": [{"tag": "S", "gt": "a", "neg": ["b"] * 4}]}]), rclip)
    with pytest.raises(ValueError, match=r"^vqav2: .* is not an lmms-lab parquet \(id, sets\); expected lmms-lab-encoder/VQAv2") as error:
        read_items("vqav2", rclip.parent)
    assert "\n" not in str(error.value)


def test_folder_that_is_neither_layout_says_what_was_expected(tmp_path):
    (tmp_path / "empty_chartqa").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^chartqa: .*empty_chartqa is neither the original release "
                                                 r"\(test_human\.json / test_augmented\.json\) nor the lmms-lab-encoder/ChartQA, "
                                                 r"formerly lmms-lab/ChartQA parquet"):
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
