"""Tiny lmms-lab-style parquet datasets, written from the columns lmms-eval's task utils read.

Each benchmark gets rows with the traps its scorers and prompts disagree on, PNG bytes embedded as the
HF Image feature (written by `datasets`, so the files carry the Hub's feature metadata and lmms-eval's
own loader decodes them), and the shard names the Hub gives lmms-eval's split
(validation-00000-of-00002-<hash>.parquet), optionally with another split beside it.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def png(seed: int) -> dict:
    rng = random.Random(seed)
    image = Image.new("RGB", (24, 20), tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": f"{seed}.png"}


def _answers(texts: list[str]) -> list[dict]:
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]


def rows_for(name: str) -> tuple[list[dict], list[str]]:
    """(rows without images, one prediction per row with the benchmark's traps)."""
    if name == "vqav2":
        rows = [
            {"question_id": 1, "question": "How many dogs?", "answers": _answers(["2", "two", "2", "two", "2", "3", "2", "2", "two", "2"]),
             "multiple_choice_answer": "2", "answer_type": "number", "question_type": "how many", "image_id": 1},
            {"question_id": 2, "question": "Is it red?", "answers": _answers(["Yes"] * 10), "multiple_choice_answer": "yes",
             "answer_type": "yes/no", "question_type": "is it", "image_id": 2},
            {"question_id": 3, "question": "What is it?", "answers": _answers(["a dog", "dog", "the dog", "dog!", "puppy", "dog", "dogs",
                                                                                "dog", "a puppy", "dog"]),
             "multiple_choice_answer": "dog", "answer_type": "other", "question_type": "what is", "image_id": 3},
            {"question_id": 4, "question": "How much?", "answers": _answers(["1,000", "1000", "1,000", "one thousand", "1,000", "1000",
                                                                              "1,000", "1000", "1,000", "1000"]),
             "multiple_choice_answer": "1000", "answer_type": "number", "question_type": "how much", "image_id": 4},
            {"question_id": 5, "question": "Whose?", "answers": _answers(["man's", "mans", "man's", "man's", "man", "man's", "mans",
                                                                           "man's", "man's", "man's"]),
             "multiple_choice_answer": "man's", "answer_type": "other", "question_type": "whose", "image_id": 5},
        ]
        return rows, ["two", "yes", "Dog.", "1,000", "Man's?"]
    if name == "textvqa":
        rows = [{"question_id": k, "image_id": f"img{k}", "question": q, "answers": a, "ocr_tokens": ["stop", "sign"]}
                for k, (q, a) in enumerate([("what does the sign say?", ["STOP", "stop", "stop", "Stop!", "stop sign", "stop", "stop",
                                                                        "stop", "stop", "stop"]),
                                            ("whose bike?", ["john's", "johns", "john's", "john", "john's", "john's", "johns", "john's",
                                                             "john's", "john's"]),
                                            ("what number?", ["three", "3", "3", "3", "three", "3", "3", "3", "3", "3"])])]
        return rows, ["Stop", "John's?", "3"]
    if name == "vizwiz":
        rows = [{"question_id": f"VizWiz_val_{k:08d}", "question": q, "answers": a, "category": c}
                for k, (q, a, c) in enumerate([("what is this?", ["soup", "soup", "can of soup", "soup", "soup", "soup", "tomato soup",
                                                                  "soup", "soup", "soup"], "other"),
                                               ("what color?", ["unanswerable"] * 10, "unanswerable"),
                                               ("what is it?", [], "other")])]
        return rows, ["Soup.", "Unanswerable", "box"]
    if name == "gqa":
        rows = [{"id": f"q{k}", "imageId": f"n{k % 2}", "question": q, "answer": a, "fullAnswer": f"It is {a}.",
                 "types": {"structural": s, "semantic": "attr"}}
                for k, (q, a, s) in enumerate([("Which side?", "left", "query"), ("Is it red?", "yes", "verify"),
                                               ("What is it?", "t-shirt", "query"), ("Color?", "white", "query")])]
        return rows, ["Left.", " yes", "tshirt", "White"]
    if name == "pope":
        rows = [{"id": str(k), "question_id": str(k), "question": f"Is there a {o} in the image?", "answer": a,
                 "image_source": f"COCO_val2014_{k:012d}", "category": c}
                for k, (o, a, c) in enumerate([("dog", "yes", "adversarial"), ("cat", "no", "adversarial"), ("car", "yes", "popular"),
                                               ("tree", "no", "random"), ("cup", "yes", "random"), ("bird", "no", "popular")])]
        return rows, ["Yes, there is a dog.", "no", " YES ", "No, there is not.", "no", "yes"]
    if name == "mme":
        rows = []
        for image, (cat, answers) in enumerate([("existence", ("Yes", "No")), ("count", ("Yes", "No")), ("code_reasoning", ("No", "Yes"))]):
            for k, answer in enumerate(answers):
                rows.append({"question_id": f"{cat}/{image:04d}.png", "question": f"Is it so {k}? Please answer yes or no.",
                             "answer": answer, "category": cat})
        return rows, ["Yes", "n", "Yes, it is.", "Not really", "nope", "y"]
    if name == "scienceqa_img":
        rows = [{"question": f"Which is {k}?", "choices": ["first", "second", "third"][: 2 + k % 2], "answer": k % 2,
                 "hint": "A hint." if k % 2 else "", "lecture": "", "solution": "", "subject": "natural science",
                 "task": "closed choice", "grade": "grade4", "topic": "t", "category": "c", "skill": "s"} for k in range(5)]
        return rows, ["A", "b", "B. second", "The answer is A.", "A. first"]
    if name == "mmvp":
        rows = [{"Index": k + 1, "Question": f"Is the dog facing left? {k}", "Options": "(a) Yes (b) No",
                 "Correct Answer": "(a)" if k % 2 == 0 else "(b)"} for k in range(6)]
        return rows, ["(a)", "B", "The answer is B", "a cat is there", "Option A", "b."]
    if name == "chartqa":
        rows = [{"type": t, "question": f"What is the value {k}?", "answer": a}
                for k, (t, a) in enumerate([("human_test", "12"), ("human_test", "25%"), ("augmented_test", "Yes"),
                                            ("augmented_test", "5"), ("human_test", "0")])]
        return rows, ["12.5", "0.25", " yes", " 5", "0"]
    if name == "ai2d":
        rows = [{"question": f"Which stage {k}?", "options": ["egg", "larva", "pupa", "adult"], "answer": str(k % 4)} for k in range(4)]
        return rows, ["A", "B. larva", "(C)", "D"]
    if name == "mmbench":
        rows = [{"index": k, "question": f"Which one {k}?", "hint": "Look." if k % 2 else None, "A": "cat", "B": "dog", "C": "cow",
                 "D": None, "answer": "ABC"[k % 3], "category": "identity", "L2-category": "perception", "source": "s",
                 "split": "dev", "comment": None} for k in range(3)]
        return rows, ["A", "B", "C"]
    if name == "seedbench_img":
        rows = [{"question_id": str(k), "question": f"What is shown {k}?", "choice_a": "a cat", "choice_b": "a dog",
                 "choice_c": "a cow", "choice_d": "a pig", "answer": "ABCD"[k % 4], "data_type": "image" if k < 3 else "video",
                 "data_id": f"{k}.jpg", "question_type_id": 1} for k in range(4)]
        return rows, ["A", "B", "C", "D"]
    raise KeyError(name)


SPLITS = {"vqav2": "validation", "textvqa": "validation", "vizwiz": "val", "gqa": "testdev", "pope": "test", "mme": "test",
          "scienceqa_img": "test", "mmvp": "train", "chartqa": "test", "ai2d": "test", "mmbench": "dev", "seedbench_img": "test"}


DECOY_SPLITS = {split: "validation" if split == "test" else "test" for split in set(SPLITS.values())}


def _dataset(rows: list[dict], image_column: str | None = "image", many: bool = False):
    import datasets

    table = datasets.Dataset.from_list(rows)
    if image_column:
        table = table.cast_column(image_column, datasets.Sequence(datasets.Image()) if many else datasets.Image())
    return table


def _write_split(table, folder: Path, split: str, shards: int, hashed: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        part = table.shard(num_shards=shards, index=i, contiguous=True)
        suffix = "-" + hashlib.sha1(f"{folder}{split}{i}".encode()).hexdigest()[:16] if hashed else ""
        part.to_parquet(str(folder / f"{split}-{i:05d}-of-{shards:05d}{suffix}.parquet"))


def write_lmms_lab(name: str, root: Path, *, shards: int = 1, hashed: bool = False, decoy: bool = False,
                   rows: list[dict] | None = None) -> Path:
    """root/<name>/ in the lmms-lab layout; returns that folder. decoy: the same rows again as another split
    (what a whole-repo snapshot holds beside the evaluated split)."""
    rows = rows if rows is not None else rows_for(name)[0]
    folder = root / name
    split = SPLITS[name]
    splits = [split] + ([DECOY_SPLITS[split]] if decoy else [])
    if name == "gqa":  # two configs: the questions and the images they refer to
        images = _dataset([{"id": image_id, "image": png(k)} for k, image_id in enumerate(sorted({r["imageId"] for r in rows}))])
        for which in splits:
            _write_split(_dataset(rows, None), folder / "testdev_balanced_instructions", which, shards, hashed)
            _write_split(images, folder / "testdev_balanced_images", which, 1, hashed)
        return folder
    # MME asks two questions of each image (rows with the same question_id share it)
    seeds = [next(j for j, other in enumerate(rows) if other["question_id"] == row["question_id"]) if name == "mme" else k
             for k, row in enumerate(rows)]
    table = _dataset([dict(row, image=[png(k)] if name == "seedbench_img" else png(k)) for k, row in zip(seeds, rows)],
                     many=name == "seedbench_img")
    for which in splits:
        _write_split(table, folder / "data", which, shards, hashed)
    return folder


# Questions with the cases where prompt builders drift apart: outer / inner whitespace, a lower-case start
# and capitals inside (str.capitalize), several lines, the "<image>" placeholder in the text.
HARD_QUESTIONS = [" What is on the left? ", "what is THIS sign?", "How many\nbirds are there?\n",
                  "<image>\nIs the cup red?", "Which  one is  bigger?"]


def prompt_rows(name: str) -> list[dict]:
    """Rows (without images) whose prompts exercise the hard cases, in the benchmark's lmms-lab columns."""
    qs = HARD_QUESTIONS
    if name == "vqav2":
        return [dict(rows_for(name)[0][0], question_id=k + 1, question=q) for k, q in enumerate(qs)]
    if name == "gqa":
        return [dict(rows_for(name)[0][0], id=f"q{k}", question=q) for k, q in enumerate(qs)]
    if name == "textvqa":
        return [dict(rows_for(name)[0][0], question_id=k, question=q) for k, q in enumerate(qs)]
    if name == "vizwiz":
        return [dict(rows_for(name)[0][0], question_id=f"VizWiz_val_{k:08d}", question=q) for k, q in enumerate(qs)]
    if name == "pope":
        return [dict(rows_for(name)[0][0], id=str(k), question_id=str(k), question=q) for k, q in enumerate(qs)]
    if name == "mme":  # the yes/no request in the middle, at the end, doubled, absent
        tails = [" Please answer yes or no.", " Please answer yes or no. ", "", " Please answer yes or no. Please answer yes or no.",
                 " Please answer yes or no.\n"]
        return [{"question_id": f"count/{k // 2:04d}.png", "question": q + t, "answer": "Yes", "category": "count"}
                for k, (q, t) in enumerate(zip(qs + ["Is it a dog?"], tails + tails[:1]))]
    if name == "scienceqa_img":  # hints: empty, text with outer spaces, several lines; 2 to 5 choices
        hints = ["", " The sun is hot. ", "Line one.\nLine two.", "", "A hint."]
        return [dict(rows_for(name)[0][0], question=q, hint=h, choices=[" first", "second ", "th  ird", "4", "five"][: 2 + k % 4],
                     answer=k % 2) for k, (q, h) in enumerate(zip(qs, hints))]
    if name == "mmbench":  # empty / missing / "nan" hints, options with spaces, a missing option, an E option
        hints = ["", None, "nan", " Look at the picture. ", "Two\nlines."]
        options = [(" cat ", "dog", "cow", None), ("a  b", " c", None, None), ("x", "y", "z", "w"), ("1", "2", "", "4"),
                   ("left", "right", "up", "down")]
        rows = []
        for k, (q, h, opts) in enumerate(zip(qs, hints, options)):
            row = {"index": k, "question": q, "hint": h, **dict(zip("ABCD", opts)), "answer": "A", "category": "identity",
                   "L2-category": "perception", "source": "s", "split": "dev", "comment": None}
            rows.append(row)
        return rows
    if name == "mmvp":  # option texts with brackets and spaces, answers in both forms
        options = ["(a) Yes (b) No", "(a)  Open  (b) Closed ", "(a) Left (facing) (b) Right", "(A) Up (B) Down", "(a) one(b) two"]
        return [{"Index": k + 1, "Question": q, "Options": o, "Correct Answer": "(a)" if k % 2 == 0 else "(b)"}
                for k, (q, o) in enumerate(zip(qs, options))]
    if name == "ai2d":
        return [{"question": q, "options": [" egg", "larva ", "pu  pa", "adult"][: 2 + k % 3], "answer": "0"} for k, q in enumerate(qs)]
    if name == "chartqa":
        return [{"type": "human_test" if k % 2 else "augmented_test", "question": q, "answer": "1"} for k, q in enumerate(qs)]
    if name == "seedbench_img":
        return [{"question_id": str(k), "question": q, "choice_a": " a cat", "choice_b": "a dog ", "choice_c": "a  cow",
                 "choice_d": "", "answer": "A", "data_type": "image", "data_id": f"{k}.jpg", "question_type_id": 1}
                for k, q in enumerate(qs)]
    raise KeyError(name)
