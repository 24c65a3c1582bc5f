"""`reasonclip eval vqa`: batched greedy generation with a tiny LlavaNext, resumable answers files."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reasonclip_llava.evaluation.benchmarks import VQAQuestion
from scoring_helpers import FIXTURES
from reasonclip_llava.evaluation.generate import (
    build_prompt,
    generate_answers,
    model_name_from_path,
    prepare_inputs,
    read_answered_ids,
)
from reasonclip_llava.testing.tiny_llava import save_tiny_llava_next
from reasonclip_llava.testing.tiny_lm import QWEN2_CHAT_TEMPLATE

# (height, width): under the pinpoints [[32,64],[64,32],[64,64]] these pick different grids and unpad
# to different token counts, so the rows of a batch differ in length before padding.
IMAGE_SIZES = [(40, 90), (100, 30), (64, 64), (20, 20), (33, 70), (80, 50), (50, 120), (32, 32)]
PROMPTS = [
    "What is the color of the car?",
    "How many people are there in the picture? Answer the question using a single word or phrase.",
    "Is there a dog?",
    "What is in the image?\nA. red\nB. blue\nC. green\nD. yellow\n"
    "Answer with the option's letter from the given choices directly.",
    "red",
    "Where is the cat?",
    "Is the blue box below the shelf? Answer the question using a single word or phrase.",
    "How many?",
]


def read_answers(path: Path) -> list[dict]:
    """The answer rows of an answers file (its header line left out)."""
    return [row for row in map(json.loads, path.read_text().splitlines()) if "header" not in row]


def header_of(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[0])["header"]["identity"]


def texts_by_id(path: Path) -> dict[str, str]:
    return {row["question_id"]: row["text"] for row in read_answers(path)}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models step in microseconds: a second OpenMP thread only spins against the other processes
    of a shared machine (several times slower here), so these tests run on one and restore the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory) -> Path:
    return save_tiny_llava_next(tmp_path_factory.mktemp("tiny_llava_next"))


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> list[VQAQuestion]:
    folder = tmp_path_factory.mktemp("vqa_images")
    rng = np.random.default_rng(0)
    items = []
    for i, ((height, width), prompt) in enumerate(zip(IMAGE_SIZES, PROMPTS)):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        items.append(VQAQuestion(f"img-{i}", str(path), prompt, max_new_tokens=4 if i == 5 else 10))
    # Same question on another image: its answer must come from its own image.
    items.append(VQAQuestion("img-0-on-image-1", items[1].image, PROMPTS[0], max_new_tokens=10))
    items += [VQAQuestion(f"text-{i}", None, prompt, max_new_tokens=10) for i, prompt in enumerate(PROMPTS[:3])]
    return items


@pytest.fixture(scope="module")
def one_by_one(tiny_llava_dir, questions, tmp_path_factory) -> Path:
    """The reference: every question generated alone (no padding at all)."""
    out = tmp_path_factory.mktemp("answers") / "batch1.jsonl"
    return generate_answers(tiny_llava_dir, questions, out, batch_size=1, progress=False)


def test_batched_answers_equal_one_by_one(tiny_llava_dir, questions, one_by_one, tmp_path):
    out = generate_answers(tiny_llava_dir, questions, tmp_path / "batch4.jsonl", batch_size=4, progress=False)
    reference = texts_by_id(one_by_one)
    assert texts_by_id(out) == reference
    # The comparison only means something if answers depend on prompt and image.
    assert len(set(reference.values())) == len(questions)
    assert reference["img-0"] != reference["img-0-on-image-1"]
    assert all(text for text in reference.values())


def test_answers_file_rows(tiny_llava_dir, questions, one_by_one):
    rows = read_answers(one_by_one)
    # question order (image questions are answered first, text-only ones after them)
    assert [row["question_id"] for row in rows] == [q.question_id for q in questions]
    header = header_of(one_by_one)
    assert header["model"] == str(tiny_llava_dir.resolve()) and header["model_id"] == tiny_llava_dir.name
    assert header["generation"]["max_new_tokens"] == 10 and header["dtype"] == "float32"
    assert not list(one_by_one.parent.glob("*.part-*"))  # the part file is merged and gone
    prompts = {q.question_id: q.prompt for q in questions}
    for row in rows:
        assert set(row) == {"question_id", "prompt", "text", "model_id"}
        assert row["prompt"] == prompts[row["question_id"]]
        assert row["model_id"] == tiny_llava_dir.name


def test_max_new_tokens_is_per_question(tiny_llava_dir, questions, one_by_one, tmp_path):
    # img-5 asks for 4 tokens while its batch generates 10: its answer is the 4-token prefix.
    longer = [VQAQuestion("img-5", questions[5].image, questions[5].prompt, max_new_tokens=10)]
    out = generate_answers(tiny_llava_dir, longer, tmp_path / "long.jsonl", batch_size=1, progress=False)
    short_text, long_text = texts_by_id(one_by_one)["img-5"], texts_by_id(out)["img-5"]
    assert long_text.startswith(short_text) and len(long_text) > len(short_text)


def test_resume_after_crash_completes_without_loss_or_duplicates(tiny_llava_dir, questions, one_by_one, tmp_path):
    out = tmp_path / "answers.jsonl"
    header, *lines = one_by_one.read_text().splitlines(keepends=True)
    # A kill -9 leaves the process's part file: three full lines and half of the fourth; a kept answer is
    # marked so that we can tell it was skipped, not generated again.
    kept = [json.loads(line) for line in lines[:3]]
    kept[0]["text"] = "KEPT FROM THE FIRST RUN"
    part = tmp_path / "answers.jsonl.part-00-of-01"
    part.write_text(header + "".join(json.dumps(row) + "\n" for row in kept) + lines[3][: len(lines[3]) // 2])

    generate_answers(tiny_llava_dir, questions, out, batch_size=4, progress=False)

    rows = read_answers(out)  # every line parses: the half line is gone
    assert [row["question_id"] for row in rows] == [q.question_id for q in questions]  # each id once, in order
    expected = texts_by_id(one_by_one)
    expected[kept[0]["question_id"]] = "KEPT FROM THE FIRST RUN"
    assert texts_by_id(out) == expected
    assert not part.exists()


def test_rerun_of_a_finished_file_changes_nothing(tiny_llava_dir, questions, one_by_one, tmp_path):
    out = tmp_path / "done.jsonl"
    shutil.copy(one_by_one, out)
    before = out.read_bytes()
    generate_answers(tiny_llava_dir, questions, out, batch_size=4, progress=False)
    assert out.read_bytes() == before


def test_read_answered_ids_repairs_only_the_last_line(tmp_path):
    out = tmp_path / "a.jsonl"
    out.write_text('{"question_id": "a", "text": "x"}\n{"question_id": 7, "text": "y"}')  # complete, no newline
    assert read_answered_ids(out) == {"a", "7"}
    assert out.read_text() == '{"question_id": "a", "text": "x"}\n{"question_id": 7, "text": "y"}\n'

    out.write_text('{"question_id": "a", "text": "x"}\n{"question_id": "b", "te')
    assert read_answered_ids(out) == {"a"}
    assert out.read_text() == '{"question_id": "a", "text": "x"}\n'


def test_bad_line_before_the_end_is_an_error_and_file_is_kept(tmp_path):
    out = tmp_path / "a.jsonl"
    content = '{"question_id": "a"}\nnot json\n{"question_id": "b"}\n'
    out.write_text(content)
    with pytest.raises(ValueError, match=r"a\.jsonl:2"):
        read_answered_ids(out)
    assert out.read_text() == content


def test_missing_image_names_question_and_path(tiny_llava_dir, questions, tmp_path):
    missing = tmp_path / "nowhere" / "gone.jpg"
    bad = [*questions[:2], VQAQuestion("q-missing", str(missing), "What is it?")]
    out = tmp_path / "answers.jsonl"
    with pytest.raises(FileNotFoundError, match=r"q-missing.*gone\.jpg"):
        generate_answers(tiny_llava_dir, bad, out, progress=False)
    assert not out.exists()


def test_unreadable_image_mid_run_keeps_earlier_answers(tiny_llava_dir, questions, one_by_one, tmp_path):
    """Inputs built in a DataLoader worker process: same answers, and its error reaches the user as is."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    run = [*questions[:4], VQAQuestion("q-broken", str(broken), "What?", max_new_tokens=10)]
    out = tmp_path / "a.jsonl"
    with pytest.raises(ValueError, match=r"^question q-broken: cannot read image .*broken\.png"):
        generate_answers(tiny_llava_dir, run, out, batch_size=2, num_workers=1, progress=False)
    reference = texts_by_id(one_by_one)
    assert not out.exists()  # the answers so far wait in the part file
    assert texts_by_id(tmp_path / "a.jsonl.part-00-of-01") == {q.question_id: reference[q.question_id] for q in questions[:4]}

    shutil.copy(questions[5].image, broken)  # fixed: the rerun answers only the missing question
    generate_answers(tiny_llava_dir, run, out, batch_size=2, progress=False)
    assert [row["question_id"] for row in read_answers(out)] == [q.question_id for q in run]


def test_duplicate_question_ids_are_rejected(tiny_llava_dir, questions, tmp_path):
    with pytest.raises(ValueError, match="img-0"):
        generate_answers(tiny_llava_dir, [questions[0], questions[0]], tmp_path / "a.jsonl", progress=False)


def test_missing_checkpoint_is_named(tmp_path, questions):
    with pytest.raises(FileNotFoundError, match="no_model"):
        generate_answers(tmp_path / "no_model", questions[:1], tmp_path / "a.jsonl", progress=False)


def test_prompt_from_processor_template_tokenizer_template_or_plain(tiny_llava_dir, tmp_path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    assert build_prompt(processor, "Is it red?", has_image=True) == (
        "<|im_start|>user\n<image>\nIs it red?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert build_prompt(processor, "Is it red?", has_image=False) == (
        "<|im_start|>user\nIs it red?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert build_prompt(processor, "Is it red?", has_image=True, conv_template="plain") == "<image>\nIs it red?"

    # Without a processor template the text LM's applies (Qwen1.5 ChatML, string content).
    processor.chat_template = None
    processor.tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    assert build_prompt(processor, "Is it red?", has_image=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nIs it red?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert build_prompt(processor, "Is it red?", has_image=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nIs it red?<|im_end|>\n<|im_start|>assistant\n"
    )
    # The same text-LM template set as the processor's (what a LLaVA-trained checkpoint saves) is
    # recognised as wanting string content, not rendered with a Python list in it.
    processor.chat_template = QWEN2_CHAT_TEMPLATE
    assert build_prompt(processor, "Is it red?", has_image=True).startswith("<|im_start|>system\n")
    assert "<|im_start|>user\n<image>\nIs it red?<|im_end|>" in build_prompt(processor, "Is it red?", has_image=True)
    processor.chat_template = processor.tokenizer.chat_template = None
    assert build_prompt(processor, "Is it red?", has_image=True) == "<image>\nIs it red?"


@pytest.fixture(scope="module")
def tiny_llama_llava_dir(tmp_path_factory) -> Path:
    """A checkpoint whose only chat template is the text LM's (Llama-3: string content, BOS in the template)."""
    return save_tiny_llava_next(tmp_path_factory.mktemp("tiny_llava_llama"), family="llama",
                                processor_chat_template=None)


def test_inputs_are_left_padded_with_one_bos(tiny_llama_llava_dir, questions):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llama_llava_dir)
    tokenizer = processor.tokenizer
    batch = [questions[i] for i in (3, 4, 1)]  # longest prompt, shortest prompt, tall image
    tokenizer.padding_side = "right"
    inputs = prepare_inputs(processor, batch)
    assert tokenizer.padding_side == "right"  # restored after the left-padded call
    mask, ids = inputs["attention_mask"], inputs["input_ids"]
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()  # padding on the left only
    assert (mask.diff(dim=1) >= 0).all()
    for row_ids, row_mask in zip(ids, mask):
        real = row_ids[row_mask.bool()].tolist()
        assert real[0] == tokenizer.bos_token_id and real.count(tokenizer.bos_token_id) == 1
        assert real.count(processor.image_token_id) > 16  # expanded anyres features, not one placeholder
    assert inputs["image_sizes"].tolist() == [list(IMAGE_SIZES[i]) for i in (3, 4, 1)]


def test_text_lm_template_checkpoint_batches_exactly(tiny_llama_llava_dir, questions, tmp_path):
    subset = [questions[i] for i in (0, 1, 3, 4, 9)]
    single = generate_answers(tiny_llama_llava_dir, subset, tmp_path / "b1.jsonl", batch_size=1, progress=False)
    batched = generate_answers(tiny_llama_llava_dir, subset, tmp_path / "b3.jsonl", batch_size=3, progress=False)
    assert texts_by_id(batched) == texts_by_id(single)
    assert len(set(texts_by_id(single).values())) == len(subset)


def test_model_id_follows_llava_naming(tmp_path):
    assert model_name_from_path(tmp_path / "run" / "checkpoint-500") == "run_checkpoint-500"
    assert model_name_from_path(tmp_path / "llava-reasonclip") == "llava-reasonclip"


def test_run_vqa_reads_the_benchmark_and_honours_limit(tiny_llava_dir, tmp_path):
    from reasonclip_llava.evaluation.benchmarks import load_questions
    from reasonclip_llava.evaluation.generate import run_vqa

    images = tmp_path / "val2014"
    images.mkdir()
    rows = []
    for i, ((height, width), thing) in enumerate(zip(IMAGE_SIZES, ["cat", "dog", "car", "cup", "bus"])):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (width, height), (40 * i, 255 - 40 * i, 90)).save(images / name)
        rows.append({"question_id": i + 1, "image": name, "text": f"Is there a {thing} in the image?",
                     "label": "yes" if i % 2 else "no"})
    data = tmp_path / "coco_pope_random.json"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))

    out = run_vqa(tiny_llava_dir, "pope", data, images, tmp_path / "answers.jsonl", limit=3, batch_size=2,
                  progress=False, max_new_tokens=10)
    expected = [replace(q, max_new_tokens=10) for q in load_questions("pope", data, images)[:3]]
    reference = generate_answers(tiny_llava_dir, expected, tmp_path / "one_by_one.jsonl", batch_size=1,
                                 progress=False)
    assert [row["question_id"] for row in read_answers(out)] == [q.question_id for q in expected]
    assert texts_by_id(out) == texts_by_id(reference)


@pytest.fixture(scope="module")
def pope_release(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny POPE split in its released form (questions JSONL + COCO images)."""
    root = tmp_path_factory.mktemp("pope_release")
    images = root / "val2014"
    images.mkdir()
    rows = []
    for i, ((height, width), thing) in enumerate(zip(IMAGE_SIZES, ["cat", "dog", "car"])):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (width, height), (60 * i, 200 - 50 * i, 90)).save(images / name)
        rows.append({"question_id": i + 1, "image": name, "text": f"Is there a {thing}?", "label": "yes" if i % 2 else "no"})
    data = root / "coco_pope_random.json"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data, images


def _cli(*args: str) -> int:
    from reasonclip_llava.cli import main

    return main(["eval", *args])


def test_answers_file_has_one_identity_and_another_run_is_refused(tiny_llava_dir, tiny_llama_llava_dir, pope_release, tmp_path,
                                                                   capsys):
    from crash_helpers import one_error_line
    from reasonclip_llava.evaluation.generate import run_vqa

    data, images = pope_release
    out = tmp_path / "answers.jsonl"
    common = dict(limit=2, batch_size=2, progress=False)
    run_vqa(tiny_llava_dir, "pope", data, images, out, max_new_tokens=3, **common)
    header = header_of(out)
    assert (header["benchmark"], header["prompts"], header["data"]) == ("pope", "llava", str(data.resolve()))
    assert header["generation"]["max_new_tokens"] == 3 and "--max-new-tokens 3" in header["generation"]["source"]
    before = out.read_bytes()
    # the same run resumes (here: nothing left to answer) ...
    run_vqa(tiny_llava_dir, "pope", data, images, out, max_new_tokens=3, **common)
    assert out.read_bytes() == before
    # ... another one is refused, whatever differs, and the file is kept as it was
    refusals = [(tiny_llama_llava_dir, 3, "model"), (tiny_llava_dir, 4, "generation.max_new_tokens 3 vs 4")]
    for model, tokens, named in refusals:
        with pytest.raises(ValueError, match=rf"answers\.jsonl holds the answers of another run \(.*{named}"):
            run_vqa(model, "pope", data, images, out, max_new_tokens=tokens, **common)
    gqa = FIXTURES / "gqa"
    args = ["vqa", "--model", str(tiny_llava_dir), "--benchmark", "gqa", "--data", str(gqa / "testdev_balanced_questions.json"),
            "--images", str(gqa / "images"), "--out", str(out), "--limit", "2", "--max-new-tokens", "3", "--no-progress"]
    assert _cli(*args) == 2
    assert "holds the answers of another run (benchmark 'pope' vs 'gqa'" in one_error_line(capsys)
    assert out.read_bytes() == before
    assert _cli(*args, "--overwrite") == 0
    assert header_of(out)["benchmark"] == "gqa" and len(read_answers(out)) == 2


def test_score_refuses_a_file_that_mixes_runs(tiny_llava_dir, tiny_llama_llava_dir, pope_release, tmp_path):
    from reasonclip_llava.evaluation.generate import run_vqa
    from reasonclip_llava.evaluation.scoring import score_answers

    data, images = pope_release
    ours = run_vqa(tiny_llava_dir, "pope", data, images, tmp_path / "a.jsonl", limit=2, max_new_tokens=3, progress=False)
    theirs = run_vqa(tiny_llama_llava_dir, "pope", data, images, tmp_path / "b.jsonl", limit=3, max_new_tokens=3, progress=False)
    assert score_answers("pope", ours, data)["n"] == 3  # one run: scored
    appended = tmp_path / "appended.jsonl"  # a second run appended to the first one's file
    appended.write_text(ours.read_text() + theirs.read_text().splitlines(keepends=True)[0] + read_answers_line(theirs, 2))
    with pytest.raises(ValueError, match=r"appended\.jsonl: mixes the answers of two runs \(model"):
        score_answers("pope", appended, data)
    rows_only = tmp_path / "rows.jsonl"  # LLaVA-style rows of two models, no header
    rows_only.write_text(read_answers_line(ours, 0) + read_answers_line(theirs, 2))
    with pytest.raises(ValueError, match=r"rows\.jsonl: mixes the answers of 2 models"):
        score_answers("pope", rows_only, data)
    gqa = FIXTURES / "gqa" / "testdev_balanced_questions.json"
    with pytest.raises(ValueError, match=r"a\.jsonl holds answers to pope, not gqa"):
        score_answers("gqa", ours, gqa)


def read_answers_line(path: Path, n: int) -> str:
    return json.dumps(read_answers(path)[n]) + "\n"


@pytest.mark.parametrize("limit", ["-2", "0"])
def test_limit_must_be_a_positive_number(tiny_llava_dir, pope_release, tmp_path, capsys, limit):
    from crash_helpers import one_error_line

    data, images = pope_release
    assert _cli("vqa", "--model", str(tiny_llava_dir), "--benchmark", "pope", "--data", str(data), "--images", str(images),
                "--out", str(tmp_path / "a.jsonl"), "--limit", limit) == 2
    assert f"--limit must be a positive number of questions, got {limit}" in one_error_line(capsys)
    assert not (tmp_path / "a.jsonl").exists()


def test_device_map_and_dtype_alias(tiny_llava_dir, pope_release, tmp_path):
    """--device-map auto (accelerate's dispatch; all on the CPU here) answers as the plain load does; bf16 is bfloat16."""
    from reasonclip_llava.evaluation.generate import run_vqa

    data, images = pope_release
    common = dict(limit=3, max_new_tokens=4, batch_size=2, progress=False)
    plain = run_vqa(tiny_llava_dir, "pope", data, images, tmp_path / "plain.jsonl", **common)
    mapped = run_vqa(tiny_llava_dir, "pope", data, images, tmp_path / "mapped.jsonl", device_map="auto", **common)
    assert texts_by_id(mapped) == texts_by_id(plain)
    bf16 = run_vqa(tiny_llava_dir, "pope", data, images, tmp_path / "bf16.jsonl", dtype="bf16", **common)
    assert header_of(bf16)["dtype"] == "bfloat16" and len(read_answers(bf16)) == 3
