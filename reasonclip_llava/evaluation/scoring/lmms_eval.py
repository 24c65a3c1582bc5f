"""`--mode lmms_eval`: every question scored as lmms-eval's task `*_process_results` + aggregation do.

Read from lmms-eval 0.7's `tasks/<task>/utils.py` and task YAMLs, written here without importing it;
`tests/test_scoring_lmms_eval.py` checks item by item against lmms-eval's own functions. The input is
the lmms-lab parquet layout (`lmms_lab.py`): each item carries its row as `meta["doc"]`. Every answer is
first cut as lmms-eval's CLI cuts it before any task sees it (`scored_response`: <think>/<analysis> blocks
removed, whitespace stripped; its --reasoning_tags default). Where lmms-eval
differs from the official scorer (the default mode), on purpose of neither side:

- VQAv2: only the punctuation and digit/article steps, no lowercasing of ',' '?' "'s" handling; the
  leave-one-out drops the human answer *records* equal to the current one (answer, id, confidence).
- TextVQA / VizWiz: the full EvalAI processor on both sides; VizWiz with no human answers scores 0.
- GQA: the YAML's exact_match with ignore_case and ignore_punctuation (no whitespace stripping).
- POPE: right only when the lowercased, stripped answer IS "yes"/"no" (no first-sentence reading);
  precision / recall count answers equal to "yes" / "no".
- MME: Otter's parse (yes/no, y/n, else "yes"/"no" in the first 4 characters); per image acc + acc+.
- ScienceQA-IMG: the answer equals the letter, or starts with "X." (LLaVA's quirk, kept by lmms-eval).
- MMVP: regex letter extraction (A/B); accuracy and pair accuracy (both of a pair right).
- ChartQA: relaxed correctness, case kept apart from lower(); only the evaluator's strip cleans the answer.
- AI2D: a leading "X." is the letter, anything else is compared whole (case and punctuation ignored).
- MMBench (mmbench_en_dev_static): MMBench_Evaluator's static path; per rotation a letter from
  can_infer (a lone letter / "(X)" / "X." form, else one option text), else extract_mcq_answer's
  ranked forms; a question is right when every rotation gives its answer. The rows scored are those of
  the split (no rotations added), as lmms-eval asks them.
- SEED-Bench-IMG (seedbench, metric seed_image): the first character of the stripped answer, compared
  without case with the letter (the default mode's extract_choice also reads "The answer is B").
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from ..benchmarks import LETTERS, MME_PERCEPTION, read_items
from .common import ScoreResult, mean_percent, percent, select_ids
from .pope import yes_precision_recall_f1
from .vqa_accuracy import evalai_normalize, process_digit_article, process_punctuation


# lmms-eval 0.7.3's --reasoning_tags default; api/reasoning.strip_reasoning_tags runs on every answer before scoring
REASONING_TAGS = (("<think>", "</think>"), ("<analysis>", "</analysis>"))


def scored_response(text: str) -> str:
    """The answer as lmms-eval scores it: each closed reasoning block removed (a lone closing tag keeps what follows
    it, as when a template opens the block in the prompt), then stripped."""
    for start_tag, end_tag in REASONING_TAGS:
        while start_tag in text and end_tag in text:
            start = text.find(start_tag)
            end = text.find(end_tag, start)
            if end == -1:
                break
            text = text[:start] + text[end + len(end_tag):]
        if end_tag in text and start_tag not in text:
            text = text.rsplit(end_tag, 1)[-1]
    return text.strip()


def vqav2_item(doc: dict, prediction: str) -> float:
    answers = [dict(a) for a in doc.get("answers") or []]
    if not answers:
        return 0.0
    for record in answers:
        record["answer"] = process_digit_article(process_punctuation(
            record["answer"].replace("\n", " ").replace("\t", " ").strip()))
    prediction = process_digit_article(process_punctuation(prediction.replace("\n", " ").replace("\t", " ").strip()))
    accuracies = []
    for record in answers:
        others = [other for other in answers if other != record]
        accuracies.append(min(1.0, sum(other["answer"] == prediction for other in others) / 3))
    return sum(accuracies) / len(accuracies)


def evalai_item(doc: dict, prediction: str) -> float:
    """TextVQA and VizWiz: leave-one-out by position over the processed human answers."""
    humans = [evalai_normalize(a) for a in doc.get("answers") or []]
    if not humans:
        return 0.0
    prediction = evalai_normalize(prediction)
    return sum(min(1.0, sum(humans[j] == prediction for j in range(len(humans)) if j != i) / 3)
               for i in range(len(humans))) / len(humans)


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def gqa_item(doc: dict, prediction: str) -> float:
    return float(prediction.lower().translate(_NO_PUNCTUATION) == str(doc["answer"]).lower().translate(_NO_PUNCTUATION))


def pope_item(doc: dict, prediction: str) -> float:
    return float(prediction.lower().strip() == doc["answer"].lower().strip())


def mme_parse(prediction: str) -> str:
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def mme_item(doc: dict, prediction: str) -> float:
    return float(mme_parse(prediction) == doc["answer"].lower().strip().replace(".", ""))


def scienceqa_item(doc: dict, prediction: str) -> float:
    target = LETTERS[int(doc["answer"])].lower()
    prediction = prediction.strip()
    if prediction.lower() == target:
        return 1.0
    if len(prediction) >= 2 and prediction[0].isupper() and prediction[1] == ".":
        return float(prediction[0].lower() == target)
    return 0.0


_MMVP_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    r"^\s*\(?([AB])\)?\.?\s*$", r"^\s*\(?([AB])\)?[\.\s]", r"answer\s+is\s+\(?([AB])\)?", r"option\s+\(?([AB])\)?",
    r"\(?([AB])\)?(?:\s|$)")]


def mmvp_letter(prediction: str) -> str:
    text = prediction.strip()
    for pattern in _MMVP_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1).upper()
    return text[0].upper() if text and text[0].upper() in ("A", "B") else ""


def mmvp_target(doc: dict) -> str:
    answer = str(doc.get("Correct Answer", doc.get("answer", ""))).strip().lower()
    if "(a)" in answer or answer == "a":
        return "A"
    if "(b)" in answer or answer == "b":
        return "B"
    return answer.upper()


def mmvp_item(doc: dict, prediction: str) -> float:
    return float(mmvp_letter(prediction) == mmvp_target(doc))


def seedbench_item(doc: dict, prediction: str) -> float:
    """seed_process_result + seed_aggregation_result: the first character of the stripped answer."""
    letter = prediction.strip()[:1]
    return float(letter.lower().strip() == str(doc["answer"]).lower().strip())


def _to_float(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def chartqa_item(doc: dict, prediction: str) -> float:
    target = doc["answer"]
    prediction_float, target_float = _to_float(prediction), _to_float(target)
    if prediction_float is not None and target_float:
        return float(abs(prediction_float - target_float) / abs(target_float) <= 0.05)
    return float(prediction.lower() == target.lower())


_LEADING_OPTION = re.compile(r"^\s*([A-Z])\.")


def ai2d_item(doc: dict, prediction: str) -> float:
    """ai2d.yaml: MultiChoiceRegexFilter (a leading "X." gives X, else the raw answer), then exact_match
    with ignore_case and ignore_punctuation against the option letter."""
    match = _LEADING_OPTION.match(prediction)
    filtered = match.group(1) if match else prediction
    target = LETTERS[int(doc["answer"])]
    return float(filtered.lower().translate(_NO_PUNCTUATION) == target.lower().translate(_NO_PUNCTUATION))


# ---- MMBench, mmbench_en_dev_static: MMBench_Evaluator.eval_result(eval_method="static") --------------------

def mmbench_choices(doc: dict) -> dict[str, str]:
    return {letter: doc[letter] for letter in "ABCD" if doc.get(letter) is not None and doc[letter] == doc[letter]}


def _infer_option(answer: str) -> str | None:
    """can_infer_option: a lone option letter among the words, else one letter in a (prefix, suffix) form."""
    choices = "ABCDE"
    words = [word.strip() for word in answer.split()]
    count = lambda prefix, suffix: sum(prefix + c + suffix in words for c in choices)  # noqa: E731
    if count("", "") == 1 and not ("A" in words and len(words) > 3):
        return next(c for c in choices if c in words)
    for prefix, suffix in (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
                           (":", ","), (":", "."), (":", ")"), (":", ").")):
        if count(prefix, suffix) == 1:
            return next(c for c in choices if prefix + c + suffix in words)
    return None


def _infer_text(answer: str, choices: dict[str, str]) -> str | None:
    hits = [letter for letter, text in choices.items() if str(text).lower() in answer.lower()]
    return hits[0] if len(hits) == 1 else None


_ANSWER_PHRASES = ("the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
                   "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
                   "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
                   "i pick", "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは")
_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3, "space": 2,
             "fallback": 0}


def extract_mcq_letter(response: str, choices: Sequence[str]) -> str:
    """_task_utils/mcq_extract.extract_mcq_answer: the best-ranked letter form, the later one on a tie."""
    if not response or not response.strip():
        return ""
    text = response.strip()
    for char in ",.!?;:'\"":
        text = text.strip(char)
    text = f" {text} "
    candidates = []
    for form, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"), ("space", "{} ")):
        candidates += [(c, text.rfind(pattern.format(c)), form) for c in choices if pattern.format(c) in text]
    lowered = text.lower()
    for phrase in _ANSWER_PHRASES:
        at = lowered.find(phrase)
        if at != -1:
            candidates += [(c, text.find(c, at + len(phrase)), "phrase") for c in choices if text.find(c, at + len(phrase)) != -1]
    stripped = text.strip()
    candidates += [(c, 0, "start") for c in choices if stripped.startswith(c) and (len(stripped) == 1 or not stripped[1].isalpha())]
    candidates += [(c, len(text) - 1, "end") for c in choices
                   if stripped.endswith(c) and (len(stripped) == 1 or not stripped[-2].isalpha())]
    if not candidates:
        candidates = [(c, text.rfind(c), "fallback") for c in choices if c in text]
    if not candidates:
        return ""
    return max(candidates, key=lambda candidate: (_PRIORITY[candidate[2]], candidate[1]))[0]


def mmbench_group_hit(rows: list[tuple[dict, str]]) -> int:
    """eval_sub_data(static_only=True) on one question's rotations, (doc, prediction) in index order."""
    predicted = [_infer_option(p) or _infer_text(p, mmbench_choices(d)) for d, p in rows]
    if any(letter and letter != doc["answer"] for letter, (doc, _) in zip(predicted, rows)):
        return 0
    for letter, (doc, prediction) in zip(predicted, rows):
        if not letter:
            extracted = extract_mcq_letter(prediction, sorted(mmbench_choices(doc)))
            if not extracted or extracted != doc["answer"]:
                return 0
    return 1


def score_mmbench_static(items: dict, answers: dict[str, str], ids: Sequence[str]) -> ScoreResult:
    groups: dict[int, list[tuple[int, dict, str]]] = defaultdict(list)
    for qid in ids:
        doc = items[qid].meta["doc"]
        prediction = scored_response(answers.get(qid) or "")
        groups[int(qid) % 1_000_000].append((int(qid), doc, prediction))
    hits = {base: mmbench_group_hit([(d, p) for _, d, p in sorted(members, key=lambda m: m[0])]) for base, members in groups.items()}
    rows = [{"question_id": qid, "prediction": answers.get(qid), "score": float(hits[int(qid) % 1_000_000])} for qid in ids]
    main = {base: next(d for i, d, _ in members if i == base) for base, members in groups.items() if any(i == base for i, _, _ in members)}
    by = lambda key: {name: mean_percent([hits[b] for b, d in main.items() if d.get(key) == name])  # noqa: E731
                      for name in sorted({d.get(key) for d in main.values()}, key=str)}
    summary = {"accuracy": mean_percent([hits[base] for base in main]), "per_category": by("category"), "per_l2_category": by("L2-category")}
    return ScoreResult(summary, rows)


ITEM_SCORERS: dict[str, Callable[[dict, str], float]] = {
    "vqav2": vqav2_item, "textvqa": evalai_item, "vizwiz": evalai_item, "gqa": gqa_item, "pope": pope_item,
    "mme": mme_item, "scienceqa_img": scienceqa_item, "mmvp": mmvp_item, "chartqa": chartqa_item, "ai2d": ai2d_item,
    "seedbench_img": seedbench_item,
}


# ---- aggregations (the YAML metric_list) --------------------------------------------------------------------

def _mean(rows: list[dict]) -> dict:
    return {"accuracy": mean_percent([r["score"] for r in rows])}


def _pope(rows: list[dict]) -> dict:
    predictions = [(r["prediction"] or "").lower().strip() for r in rows]
    truths = [r["doc"]["answer"].lower().strip() for r in rows]
    precision, recall, f1 = yes_precision_recall_f1(predictions, truths)
    yes = sum(t == "yes" for t in truths)  # lmms-eval's yes_ratio counts the ground truth
    return {"accuracy": mean_percent([r["score"] for r in rows]), "precision": 100 * precision, "recall": 100 * recall,
            "f1": 100 * f1, "yes_ratio": percent(yes, sum(t in ("yes", "no") for t in truths))}


def _mme(rows: list[dict]) -> dict:
    by_category: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_category[row["doc"]["category"]][str(row["doc"]["question_id"])].append(row["score"])
    subtasks = {}
    for category, per_image in by_category.items():
        total = 0.0
        for image, scores in per_image.items():
            if len(scores) != 2:
                raise ValueError(f"mme: image {image} has {len(scores)} questions; lmms-eval scores pairs")
            total += 100.0 * sum(scores) / 2 + 100.0 * (sum(scores) == 2)
        subtasks[category] = total / len(per_image)
    perception = sum(v for k, v in subtasks.items() if k in MME_PERCEPTION)
    cognition = sum(v for k, v in subtasks.items() if k not in MME_PERCEPTION)
    return {"score": perception + cognition, "perception": perception, "cognition": cognition, "per_subtask": subtasks}


def _mmvp(rows: list[dict]) -> dict:
    pairs: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        index = row["doc"].get("Index", row["doc"].get("index", -1))
        index = index - 1 if isinstance(index, int) and index > 0 else index
        pairs[index // 2].append(row["score"])
    complete = [scores for scores in pairs.values() if len(scores) == 2]
    return {"accuracy": mean_percent([r["score"] for r in rows]),
            "pair_accuracy": percent(sum(all(s) for s in complete), len(complete))}


def _chartqa(rows: list[dict]) -> dict:
    split = lambda name: [r["score"] for r in rows if ("human" if r["doc"]["type"] == "human_test" else "augmented") == name]
    return {"accuracy": mean_percent([r["score"] for r in rows]),
            "per_split": {name: mean_percent(split(name)) for name in ("human", "augmented") if split(name)}}


AGGREGATIONS: dict[str, Callable[[list[dict]], dict]] = {
    "vqav2": _mean, "textvqa": _mean, "vizwiz": _mean, "gqa": _mean, "pope": _pope, "mme": _mme,
    "scienceqa_img": _mean, "mmvp": _mmvp, "chartqa": _chartqa, "ai2d": _mean, "seedbench_img": _mean,
}


COVERED = (*ITEM_SCORERS, "mmbench")


def score_lmms_eval(name: str, answers: dict[str, str], annotations: Path, keep: Sequence[str] | None) -> ScoreResult:
    """Per-question scores and the aggregate of lmms-eval's task for `name` (lmms-lab parquet input)."""
    if name not in COVERED:
        raise ValueError(f"{name}: --mode lmms_eval covers {', '.join(COVERED)}")
    items = {item.question_id: item for item in read_items(name, annotations, circular=False)}
    if any("doc" not in item.meta for item in items.values()):
        raise ValueError(f"{name}: --mode lmms_eval scores the lmms-lab parquet layout; {annotations} is the original release")
    if name == "mmbench":  # circular: a question is right when every rotation is
        return score_mmbench_static(items, answers, select_ids(items, keep, annotations))
    rows = []
    for qid in select_ids(items, keep, annotations):
        doc, prediction = items[qid].meta["doc"], answers.get(qid)
        prediction = None if prediction is None else scored_response(prediction)
        score = 0.0 if prediction is None else ITEM_SCORERS[name](doc, prediction)
        rows.append({"question_id": qid, "prediction": prediction, "score": score, "doc": doc})
    summary = AGGREGATIONS[name](rows)
    for row in rows:
        del row["doc"]
    return ScoreResult(summary, rows)
