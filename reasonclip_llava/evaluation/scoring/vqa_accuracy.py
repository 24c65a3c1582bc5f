"""VQA accuracy (VQAv2, TextVQA, VizWiz): min(1, #humans agreeing / 3), averaged over 10-choose-9.

Two answer-processing modes:
- 'official': GT-Vision-Lab vqaEval.py since its 2021 fix. Answers are stripped (newlines and tabs
  become spaces); only when the human answers are not all the same are the prediction and the human
  answers normalized (punctuation step, then lowercase / number words / articles / contractions).
  With ten identical human answers "Yes" does not match "yes".
- 'evalai': the EvalAI answer processor that LLaVA (m4c_evaluator.py) and lmms-eval use: always
  lowercase, drop ',' and '?', split "'s", then the same two normalization steps, on both sides.

The leave-one-out average is by position: with n human answers of which m equal the prediction, the
score is (m * min(1, (m-1)/3) + (n-m) * min(1, m/3)) / n, i.e. 0.3, 0.6, 0.9, 1.0 for m = 1, 2, 3, 4+.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path

from ..benchmarks import read_json, require
from .common import ScoreResult, grouped_percent, mean_percent, select_ids

# The 21 marks of vqaEval.py; "'", ':' and '.' are not among them ('.' has its own rule).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
# vqaEval.py's table, verbatim (its capitalized keys never match lowercased words; kept as released).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
# Released as "(?!<=\d)(\.)(?!\d)": the first group is a lookahead (a typo for a lookbehind), so in
# effect a period is removed unless a digit follows it.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
MODES = ("official", "evalai")


def process_punctuation(text: str) -> str:
    """vqaEval.processPunctuation: a mark next to a space (or any mark when the text has a
    digit-comma-digit such as "1,000") is deleted, otherwise replaced by a space; then periods."""
    out = text
    delete_all = _COMMA_STRIP.search(text) is not None
    for mark in PUNCTUATION:
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    # vqaEval passes re.UNICODE (= 32) where sub() takes `count`: at most 32 periods go.
    return _PERIOD_STRIP.sub("", out, count=32)


def process_digit_article(text: str) -> str:
    """vqaEval.processDigitArticle: lowercase, number words -> digits, drop articles, contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


@lru_cache(maxsize=1 << 18)  # human answers repeat: VQAv2 val has 2M answers, far fewer distinct ones
def official_normalize(text: str) -> str:
    return process_digit_article(process_punctuation(_clean_whitespace(text)))


@lru_cache(maxsize=1 << 18)
def evalai_normalize(text: str) -> str:
    """EvalAIAnswerProcessor.__call__ (LLaVA m4c_evaluator.py, lmms-eval)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return process_digit_article(process_punctuation(_clean_whitespace(text)))


def vqa_accuracy(prediction: str, human_answers: Sequence[str], mode: str = "official") -> float:
    """Accuracy in [0, 1] of one prediction against the human answers (usually 10)."""
    if not human_answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    if mode == "official":
        humans = [_clean_whitespace(a) for a in human_answers]
        prediction = _clean_whitespace(prediction)
        if len(set(humans)) > 1:
            humans = [official_normalize(a) for a in humans]
            prediction = official_normalize(prediction)
    elif mode == "evalai":
        humans = [evalai_normalize(a) for a in human_answers]
        prediction = evalai_normalize(prediction)
    else:
        raise ValueError(f"unknown VQA accuracy mode {mode!r}; expected one of {MODES}")
    matches = sum(answer == prediction for answer in humans)
    # leave human i out: the others agreeing are matches - [human i agrees]
    return sum(min(1.0, (matches - (answer == prediction)) / 3) for answer in humans) / len(humans)


@dataclass
class VQAAnnotation:
    answers: list[str]
    answer_type: str | None = None
    question_type: str | None = None


def read_vqa_annotations(path: Path) -> dict[str, VQAAnnotation]:
    """question_id -> human answers, from VQAv2 annotations ({"annotations": [...]}), TextVQA
    ({"data": [...]}, answers as strings) or VizWiz (a list; the image name is the question id)."""
    obj = read_json(path)
    if isinstance(obj, dict) and "annotations" in obj:
        rows, id_key = obj["annotations"], "question_id"
    elif isinstance(obj, dict) and "data" in obj:
        rows, id_key = obj["data"], "question_id"
    elif isinstance(obj, list):
        rows, id_key = obj, "image"
    else:
        raise ValueError(f"{path}: not a VQAv2 ('annotations'), TextVQA ('data') or VizWiz (list) annotation file")
    out: dict[str, VQAAnnotation] = {}
    for i, row in enumerate(rows):
        qid = str(require(row, id_key, path, i))
        answers = require(row, "answers", path, qid)
        texts = [a["answer"] if isinstance(a, dict) else a for a in answers]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{path}: question {qid} has a human answer that is not a string")
        out[qid] = VQAAnnotation(texts, row.get("answer_type"), row.get("question_type"))
    return out


def _parquet_truth(annotations: Path) -> dict[str, VQAAnnotation]:
    """Human answers from the lmms-lab parquet of VQAv2 / TextVQA / VizWiz."""
    from ..benchmarks import read_items
    from ..lmms_lab import benchmark_of

    items = read_items(benchmark_of(annotations, ("vqav2", "textvqa", "vizwiz")), annotations)
    return {item.question_id: VQAAnnotation(item.answer or [], item.meta.get("answer_type"), item.meta.get("question_type"))
            for item in items}


def score_vqa(answers: dict[str, str], annotations: Path, mode: str, keep: Sequence[str] | None) -> ScoreResult:
    from ..lmms_lab import is_parquet_input

    truth = _parquet_truth(annotations) if is_parquet_input(annotations) else read_vqa_annotations(annotations)
    rows = []
    for qid in select_ids(truth, keep, annotations):
        ann, prediction = truth[qid], answers.get(qid)
        score = 0.0 if prediction is None or not ann.answers else vqa_accuracy(prediction, ann.answers, mode)
        rows.append({"question_id": qid, "prediction": prediction, "score": score,
                     "answer_type": ann.answer_type, "question_type": ann.question_type})
    summary = {"accuracy": mean_percent([r["score"] for r in rows]),
               "per_answer_type": grouped_percent(rows, "answer_type")}
    if any(r["question_type"] for r in rows):
        summary["per_question_type"] = grouped_percent(rows, "question_type")
    return ScoreResult(summary, rows)
