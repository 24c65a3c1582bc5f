"""`--mode lmms_eval` equals lmms-eval's own task functions, item by item and in aggregate.

The task `utils.py` files are imported from the installed lmms-eval (tests/lmms_eval_reference.py).
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import pytest

from lmms_eval_reference import cli_reasoning_tags, cli_response, task_utils
from lmms_lab_fixtures import rows_for, write_lmms_lab
from reasonclip_llava.evaluation.benchmarks import read_items
from reasonclip_llava.evaluation.scoring import score_answers


def ours(name: str, tmp_path: Path) -> tuple[list[dict], list[str], dict, list[dict]]:
    """(docs as lmms-eval sees them, predictions, our summary, our per-question rows) for one benchmark."""
    data = write_lmms_lab(name, tmp_path)
    items = read_items(name, data)
    _, predictions = rows_for(name)
    answers = tmp_path / f"{name}_answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": i.question_id, "text": p}) + "\n" for i, p in zip(items, predictions)))
    summary = score_answers(name, answers, data, mode="lmms_eval", out_dir=tmp_path / "scores")
    rows = [json.loads(line) for line in (tmp_path / "scores" / f"{name}_scores.jsonl").read_text().splitlines()]
    assert summary["mode"] == "lmms_eval"
    return [i.meta["doc"] for i in items], predictions, summary, rows


def test_vqav2(tmp_path):
    utils = task_utils("vqav2.utils")
    docs, predictions, summary, rows = ours("vqav2", tmp_path)
    theirs = [utils.vqav2_process_results_val(copy.deepcopy(d), [cli_response(p)])["exact_match"] for d, p in zip(docs, predictions)]
    assert [r["score"] for r in rows] == pytest.approx(theirs)
    assert summary["accuracy"] == pytest.approx(100 * sum(theirs) / len(theirs))
    assert theirs[1] == 1.0  # "Yes" x10 vs "yes": lmms-eval lowercases, the official scorer (default mode) does not


@pytest.mark.parametrize("name, module, function", [("textvqa", "textvqa.utils", "textvqa_process_results"),
                                                    ("vizwiz", "vizwiz_vqa.utils", "vizwiz_vqa_process_results")])
def test_textvqa_vizwiz(tmp_path, name, module, function):
    process = getattr(task_utils(module), function)
    docs, predictions, summary, rows = ours(name, tmp_path)
    theirs = [process(copy.deepcopy(d), [cli_response(p)])["exact_match"] for d, p in zip(docs, predictions)]
    assert [r["score"] for r in rows] == pytest.approx(theirs)
    assert summary["accuracy"] == pytest.approx(100 * sum(theirs) / len(theirs))


def test_gqa_exact_match_as_the_yaml_configures_it(tmp_path):
    # gqa.yaml: metric exact_match, ignore_case, ignore_punctuation (lmms_eval.api.metrics.exact_match_hf_evaluate)
    try:
        metrics = importlib.import_module("lmms_eval.api.metrics")
    except ImportError as error:  # the harness module needs sacrebleu (and lxml): not a --no-deps install
        pytest.skip(f"lmms_eval.api.metrics cannot be imported offline: {error}")
    docs, predictions, summary, rows = ours("gqa", tmp_path)
    theirs = [metrics.exact_match_hf_evaluate([cli_response(p)], [d["answer"]], ignore_case=True, ignore_punctuation=True)["exact_match"]
              for d, p in zip(docs, predictions)]
    assert [r["score"] for r in rows] == pytest.approx(theirs)


def test_pope(tmp_path):
    utils = task_utils("pope.utils")
    docs, predictions, summary, rows = ours("pope", tmp_path)
    results = [utils.pope_process_results(copy.deepcopy(d), [cli_response(p)]) for d, p in zip(docs, predictions)]
    assert [r["score"] for r in rows] == [res["pope_accuracy"]["score"] for res in results]
    for metric, key in (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("f1", "f1_score"),
                        ("yes_ratio", "yes_ratio")):
        theirs = getattr(utils, f"pope_aggregate_{key}")([res[f"pope_{key}"] for res in results])
        assert summary[metric] == pytest.approx(100 * theirs), metric
    assert [r["score"] for r in rows][0] == 0.0  # "Yes, there is a dog." is not "yes" for lmms-eval


def test_mme(tmp_path):
    utils = task_utils("mme.utils")
    docs, predictions, summary, rows = ours("mme", tmp_path)
    results = [utils.mme_process_results(copy.deepcopy(d), [cli_response(p)]) for d, p in zip(docs, predictions)]
    assert [r["score"] for r in rows] == [next(iter(res.values()))["score"] for res in results]
    for key, ours_key in (("mme_perception_score", "perception"), ("mme_cognition_score", "cognition")):
        theirs = utils.mme_aggregate_results([res[key] for res in results if key in res])
        assert summary[ours_key] == pytest.approx(theirs), key


def test_scienceqa_img(tmp_path):
    utils = task_utils("scienceqa.utils")
    docs, predictions, summary, rows = ours("scienceqa_img", tmp_path)
    theirs = [utils.sqa_process_results(copy.deepcopy(d), [cli_response(p)])["exact_match"] for d, p in zip(docs, predictions)]
    assert [r["score"] for r in rows] == theirs
    assert summary["accuracy"] == pytest.approx(100 * sum(theirs) / len(theirs))


def test_mmvp(tmp_path):
    utils = task_utils("mmvp.utils")
    docs, predictions, summary, rows = ours("mmvp", tmp_path)
    results = [utils.mmvp_process_results(copy.deepcopy(d), [cli_response(p)]) for d, p in zip(docs, predictions)]
    assert [r["score"] for r in rows] == [float(res["mmvp_accuracy"]["is_correct"]) for res in results]
    assert summary["accuracy"] == pytest.approx(100 * utils.mmvp_aggregate_results([r["mmvp_accuracy"] for r in results]))
    assert summary["pair_accuracy"] == pytest.approx(100 * utils.mmvp_aggregate_pair_results([r["mmvp_pair_accuracy"] for r in results]))


def test_chartqa(tmp_path):
    utils = task_utils("chartqa.utils")
    docs, predictions, summary, rows = ours("chartqa", tmp_path)
    results = [utils.chartqa_process_results(copy.deepcopy(d), [cli_response(p)]) for d, p in zip(docs, predictions)]
    assert [r["score"] for r in rows] == [res["relaxed_overall"] for res in results]
    human = [res["relaxed_human_split"] for res in results if "relaxed_human_split" in res]
    assert summary["per_split"]["human"] == pytest.approx(100 * sum(human) / len(human))
    assert [r["score"] for r in rows][2] == 1.0  # " yes" vs "Yes": the evaluator strips the answer before chartqa's rule


def test_ai2d_filter_then_exact_match(tmp_path):
    utils = task_utils("ai2d.utils")  # imports lmms_eval.filters (datasets, pytz)
    docs, predictions, summary, rows = ours("ai2d", tmp_path)
    regex = utils.MultiChoiceRegexFilter(regex_pattern=r"([A-Z])\.", group_select=0, ignore_case=True, ignore_punctuation=True)
    filtered = regex.apply([[cli_response(p)] for p in predictions], docs)
    targets = [utils.ai2d_doc_to_target(d, "mcq") for d in docs]
    # exact_match as ai2d.yaml sets it (lmms_eval.api.metrics needs sacrebleu): lowercased, string.punctuation dropped
    import string
    strip = str.maketrans("", "", string.punctuation)
    theirs = [float(f.lower().translate(strip) == t.lower().translate(strip)) for f, t in zip(filtered, targets)]
    assert [r["score"] for r in rows] == theirs
    assert theirs == [1.0, 1.0, 1.0, 1.0]  # "(C)" becomes "c" once punctuation is ignored


def test_mmbench_static_circular(tmp_path):
    from lmms_lab_fixtures import png  # noqa: F401  (fixture module already imported)
    import pyarrow as pa
    import pyarrow.parquet as pq

    utils = task_utils("mmbench.en_utils")
    evaluator = utils.mmbench_evaluator
    # the lmms-lab dev split holds the rotated copies (index + k * 1e6) itself
    base = [{"index": k, "question": f"Which animal {k}?", "hint": None, "A": "cat", "B": "dog", "C": "cow", "D": None,
             "answer": "ABC"[k % 3], "category": "identity" if k < 2 else "scene", "L2-category": "perception",
             "source": "s", "split": "dev", "comment": None} for k in range(4)]
    rows = []
    for k in range(3):
        for row in base:
            texts = [row["A"], row["B"], row["C"]]
            rotated = texts[k:] + texts[:k]
            answer = "ABC"[(("ABC".index(row["answer"])) - k) % 3]
            rows.append({**row, "index": row["index"] + k * 1_000_000, "A": rotated[0], "B": rotated[1], "C": rotated[2],
                         "answer": answer})
    folder = tmp_path / "mmbench" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([dict(r, image=png(i)) for i, r in enumerate(rows)]), folder / "dev-00000-of-00001.parquet")
    # traps: a bare letter, "(B)", the option's text, "A cat" (A as an article), a letter in a sentence, nothing
    traps = ["{a}", "({a})", "{t}", "The answer is {a}.", "I think it is {t}", "A {t}", "hmm", "{a}. {t}"]
    answers, predictions = tmp_path / "mmbench_answers.jsonl", {}
    for n, row in enumerate(rows):
        letter = row["answer"]
        prediction = traps[n % len(traps)].format(a=letter, t=row[letter])
        predictions[row["index"]] = prediction
    answers.write_text("".join(json.dumps({"question_id": str(i), "text": p}) + "\n" for i, p in predictions.items()))
    summary = score_answers("mmbench", answers, tmp_path / "mmbench", mode="lmms_eval", out_dir=tmp_path / "scores")
    results = [utils.mmbench_process_results(r, [cli_response(predictions[r["index"]])])["gpt_eval_score"] | {k: r[k] for k in "ABCD"} for r in rows]
    overall, categories, l2 = evaluator.eval_result(copy.deepcopy(results), eval_method="static")
    assert summary["accuracy"] == pytest.approx(100 * overall)
    assert summary["per_category"] == pytest.approx({k: 100 * v for k, v in categories.items() if k != "split"})
    ours_rows = {r["question_id"]: r["score"] for r in map(json.loads, (tmp_path / "scores" / "mmbench_scores.jsonl").read_text().splitlines())}
    import pandas as pd
    frame = pd.DataFrame(results)
    for base_index in range(4):
        group = frame[frame["index"] % 1_000_000 == base_index].sort_values("index")
        theirs = evaluator.eval_sub_data(group, dict(zip(frame["index"], frame["answer"])), static_only=True)
        assert ours_rows[str(base_index)] == theirs, base_index
    assert 0 < overall < 1  # the traps make some questions fail


def test_seedbench_image_questions(tmp_path):
    utils = task_utils("seedbench.utils")
    rows = [{"question_id": str(k), "question": f"What is shown {k}?", "choice_a": "a cat", "choice_b": "a dog", "choice_c": "a cow",
             "choice_d": "a pig", "answer": "ABCD"[k % 4], "data_type": "image", "data_id": f"{k}.jpg", "question_type_id": 1}
            for k in range(6)]
    # traps: the letter first, a lower-case letter, "(B)" (its first character is "("), an article, spaces, nothing
    predictions = ["A. a cat", "b", "(C)", "A dog", "  a ", ""]
    data = write_lmms_lab("seedbench_img", tmp_path, rows=rows)
    items = read_items("seedbench_img", data)
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": i.question_id, "text": p}) + "\n" for i, p in zip(items, predictions)))
    summary = score_answers("seedbench_img", answers, data, mode="lmms_eval", out_dir=tmp_path / "scores")
    ours = [json.loads(line)["score"] for line in (tmp_path / "scores" / "seedbench_img_scores.jsonl").read_text().splitlines()]
    results = [utils.seed_process_result(copy.deepcopy(i.meta["doc"]), [cli_response(p)])["seed_image"] for i, p in zip(items, predictions)]
    theirs = [float(utils.seed_aggregation_result([r])) for r in results]
    assert ours == theirs == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert summary["accuracy"] == pytest.approx(100 * utils.seed_aggregation_result(results))
    official = score_answers("seedbench_img", answers, data)
    assert official["accuracy"] != summary["accuracy"]  # "(C)" is C for the default mode's extract_choice


def test_answers_are_cut_as_lmms_eval_cli_cuts_them():
    """Before any task sees an answer the evaluator removes reasoning blocks (--reasoning_tags) and strips it."""
    from reasonclip_llava.evaluation.scoring.lmms_eval import REASONING_TAGS, scored_response

    assert [list(pair) for pair in REASONING_TAGS] == cli_reasoning_tags()
    traps = ["  B ", "<think>it is A</think> B", "<think>a</think><analysis>b</analysis>yes", "reasoning</think>\nC.",
             "<think>never closed B", "x</think>y</think> z", "<THINK>no</THINK> A", "<analysis>1</analysis> 2 <analysis>3</analysis>", ""]
    assert [scored_response(t) for t in traps] == [cli_response(t) for t in traps]
