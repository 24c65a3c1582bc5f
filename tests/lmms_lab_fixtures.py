"""Tiny lmms-lab-style parquet datasets, written from the columns lmms-eval's task utils read.

Each benchmark gets rows with the traps its scorers disagree on, PNG bytes embedded as the HF Image
struct {bytes, path}, and the shard name lmms-eval's split uses (e.g. validation-00000-of-00001).
"""

from __future__ import annotations

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


def write_lmms_lab(name: str, root: Path) -> Path:
    """root/<name>/ in the lmms-lab layout; returns that folder."""
    rows, _ = rows_for(name)
    folder = root / name
    if name == "gqa":  # two configs: the questions and the images they refer to
        (folder / "testdev_balanced_instructions").mkdir(parents=True, exist_ok=True)
        (folder / "testdev_balanced_images").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet")
        images = [{"id": image_id, "image": png(k)} for k, image_id in enumerate(sorted({r["imageId"] for r in rows}))]
        pq.write_table(pa.Table.from_pylist(images), folder / "testdev_balanced_images" / "testdev-00000-of-00001.parquet")
        return folder
    with_images = [dict(row, image=[png(k)] if name == "seedbench_img" else png(k)) for k, row in enumerate(rows)]
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(with_images), folder / "data" / f"{SPLITS[name]}-00000-of-00001.parquet")
    return folder
