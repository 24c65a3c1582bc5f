"""lmms-eval's own CLI and ours on the same files: the same prompts, answers and scores, item by item, all 12.

`python -m lmms_eval --model llava_hf --model_args pretrained=<tiny LlavaNext of ours> --tasks <local tasks>`
runs lmms-eval 0.7.3's task YAMLs unchanged except where the files come from (the lmms-lab parquet written
here, offline; GQA's images from the local images config instead of the Hub) and MMBench's Excel submission
metric (it needs openpyxl; the static score is kept). Both sides generate 4 new tokens (lmms-eval's
--gen_kwargs, our --max-new-tokens), so the run fits CI; the per-task lengths are checked against the YAMLs in
test_eval_settings.py. Then `reasonclip eval vqa --prompts lmms_eval` + `eval score --mode lmms_eval`.

A tiny random model rarely answers right, so that the scores say something the ground truth of every other
question is set to the answer the model gives it (read in a first pass of ours on the same rows and images):
those score 1 where the benchmark's rule can take a free answer (VQAv2, TextVQA, VizWiz, GQA, ChartQA, SEED-Bench's
first letter; POPE's must be yes or no), the rest 0.

The CLI needs more of lmms-eval's dependencies than its task files do (filelock<4, pytablewriter, tenacity,
zstandard: the `[test]` extra); without them the test is skipped.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmms_eval_reference import TASKS, TASKS_DIR, task_utils
from lmms_lab_fixtures import SPLITS, rows_for, write_lmms_lab
from reasonclip_llava.cli import main
from reasonclip_llava.evaluation.benchmarks import read_items

pytestmark = pytest.mark.slow
NEW_TOKENS = 4
_MISSING = [m for m in ("filelock._api", "pytablewriter", "tenacity", "zstandard") if importlib.util.find_spec(m.split(".")[0]) is None
            or (m == "filelock._api" and importlib.util.find_spec(m) is None)]

GQA_UTILS = '''import datasets


def gqa_local_process_docs(dataset):
    # gqa_process_docs with the images config read from the local parquet instead of the Hub
    images = datasets.load_dataset("parquet", data_files={FILES!r}, split="train")
    id2image = {{row["id"]: row["image"].convert("RGB") for row in images}}
    return dataset.map(lambda doc: {{"image": id2image[doc["imageId"]]}})
'''


def _literal(raw):
    # the samples file keeps a dict-valued metric as its Python repr
    return ast.literal_eval(raw) if isinstance(raw, str) and raw.startswith("{") else raw


def _per_item_score(name: str, sample: dict) -> float:
    """lmms-eval's per-item metric of one logged sample, as its aggregation counts it."""
    def value(key: str):
        return _literal(sample[key])

    if name in ("vqav2", "textvqa", "vizwiz", "gqa", "scienceqa_img", "ai2d"):
        return float(value("exact_match"))
    if name == "pope":
        return float(value("pope_accuracy")["score"])
    if name == "mme":
        return float(value("mme_perception_score" if "mme_perception_score" in sample else "mme_cognition_score")["score"])
    if name == "mmvp":
        return float(value("mmvp_accuracy")["is_correct"])
    if name == "chartqa":
        return float(value("relaxed_overall"))
    if name == "seedbench_img":
        result = value("seed_image")
        return float(task_utils("seedbench.utils").seed_aggregation_result([result]))
    raise KeyError(name)


# benchmark -> (lmms-eval aggregate "metric,filter", our summary key, scale to percent)
AGGREGATES = {
    "vqav2": [("exact_match,none", "accuracy", 100)], "gqa": [("exact_match,none", "accuracy", 100)],
    "textvqa": [("exact_match,none", "accuracy", 100)], "vizwiz": [("exact_match,none", "accuracy", 100)],
    "pope": [("pope_accuracy,none", "accuracy", 100), ("pope_f1_score,none", "f1", 100), ("pope_precision,none", "precision", 100)],
    "mme": [("mme_perception_score,none", "perception", 1), ("mme_cognition_score,none", "cognition", 1)],
    "scienceqa_img": [("exact_match,none", "accuracy", 100)], "mmbench": [("gpt_eval_score,none", "accuracy", 1)],
    "mmvp": [("mmvp_accuracy,none", "accuracy", 100), ("mmvp_pair_accuracy,none", "pair_accuracy", 100)],
    "ai2d": [("exact_match,flexible-extract", "accuracy", 100)], "chartqa": [("relaxed_overall,none", "accuracy", 100)],
    "seedbench_img": [("seed_image,none", "accuracy", 100)],
}


def _truth_from(name: str, row: dict, text: str) -> dict:
    """`row` with the ground truth set to the model's answer `text`, where the benchmark's answer is free text."""
    if name == "vqav2":
        return dict(row, multiple_choice_answer=text,
                    answers=[{"answer": text, "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)])
    if name in ("textvqa", "vizwiz"):
        return dict(row, answers=[text] * 10)
    if name in ("gqa", "chartqa"):
        return dict(row, answer=text)
    if name == "seedbench_img":
        return dict(row, answer=text.strip()[:1] or "A")
    return row


def _write_tasks(root: Path, data: dict[str, Path]) -> Path:
    tasks = root / "tasks"
    tasks.mkdir()
    for name, (yaml_path, _, _) in TASKS.items():
        split = SPLITS[name]
        folder = data[name] / ("testdev_balanced_instructions" if name == "gqa" else "data")
        lines = [f"include: {TASKS_DIR / yaml_path}", f"task: rc_{name}", "dataset_path: parquet", "dataset_name: null",
                 f"test_split: {split}", "dataset_kwargs:", "  data_files:", f"    {split}:"]
        lines += [f"      - {path}" for path in sorted(folder.glob("*.parquet"))]
        if name == "gqa":
            images = sorted(str(p) for p in (data[name] / "testdev_balanced_images").glob("*.parquet"))
            (tasks / "rc_utils.py").write_text(GQA_UTILS.format(FILES=images))
            lines.append("process_docs: !function rc_utils.gqa_local_process_docs")
        if name == "mmbench":  # the static score only: the Excel submission metric needs openpyxl
            (tasks / "rc_mmbench_utils.py").write_text(
                "from lmms_eval.tasks.mmbench.en_utils import mmbench_aggregate_dev_results_static  # noqa: F401\n")
            lines += ["metric_list:", "  - metric: gpt_eval_score",
                      "    aggregation: !function rc_mmbench_utils.mmbench_aggregate_dev_results_static", "    higher_is_better: true"]
        (tasks / f"rc_{name}.yaml").write_text("\n".join(lines) + "\n")
    return tasks


@pytest.mark.skipif(bool(_MISSING), reason=f"lmms-eval's CLI needs {', '.join(_MISSING)} (pip install -e .[test])")
def test_lmms_eval_cli_and_ours_agree_item_by_item(tmp_path, capsys):
    from reasonclip_llava.testing.tiny_llava import save_tiny_llava_next

    from reasonclip_llava.evaluation.generate import run_vqa

    model = save_tiny_llava_next(tmp_path / "tiny_llava")
    first_pass, data = {}, {}
    for name in TASKS:
        rows = rows_for(name)[0]
        out = run_vqa(model, name, write_lmms_lab(name, tmp_path / "first"), tmp_path / "images", tmp_path / "first" / f"{name}.jsonl",
                      prompts="lmms_eval", max_new_tokens=NEW_TOKENS, progress=False)
        first_pass[name] = {row["question_id"]: row["text"] for row in map(json.loads, out.read_text().splitlines()[1:])}
        items = read_items(name, tmp_path / "first" / name, prompts="lmms_eval")
        texts = {item.meta["doc_id"]: first_pass[name][item.question_id] for item in items}
        rows = [_truth_from(name, row, texts[k]) if k % 2 == 0 and k in texts else row for k, row in enumerate(rows)]
        data[name] = write_lmms_lab(name, tmp_path / "data", rows=rows)
    tasks = _write_tasks(tmp_path, data)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "lmms_eval", "--model", "llava_hf", "--model_args", f"pretrained={model},dtype=float32,device_map=cpu",
               "--tasks", ",".join(f"rc_{name}" for name in TASKS), "--include_path", str(tasks), "--batch_size", "1",
               "--device", "cpu", "--gen_kwargs", f"max_new_tokens={NEW_TOKENS}", "--log_samples", "--output_path", str(tmp_path / "lmms")]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-4000:]
    (results_path,) = (p for p in (tmp_path / "lmms").glob("*/*_results.json") if p.parent.name != "submissions")
    results = json.loads(results_path.read_text())

    parity = {}
    for name in TASKS:
        (samples_path,) = (tmp_path / "lmms").glob(f"*/*_samples_rc_{name}.jsonl")
        samples = {s["doc_id"]: s for s in map(json.loads, samples_path.read_text().splitlines())}
        assert results["configs"][f"rc_{name}"]["generation_kwargs"]["max_new_tokens"] == NEW_TOKENS
        out = tmp_path / "ours" / f"{name}_answers.jsonl"
        assert main(["eval", "vqa", "--model", str(model), "--benchmark", name, "--data", str(data[name]), "--images", str(tmp_path / "images"),
                     "--out", str(out), "--prompts", "lmms_eval", "--max-new-tokens", str(NEW_TOKENS), "--batch-size", "4",
                     "--no-progress"]) == 0
        assert main(["eval", "score", "--benchmark", name, "--answers", str(out), "--annotations", str(data[name]), "--mode", "lmms_eval",
                     "--out", str(tmp_path / "scores")]) == 0
        summary = json.loads((tmp_path / "scores" / f"{name}_summary.json").read_text())
        capsys.readouterr()
        answers = {row["question_id"]: row for row in map(json.loads, out.read_text().splitlines()[1:])}
        scores = {row["question_id"]: row["score"] for row in map(json.loads, (tmp_path / "scores" / f"{name}_scores.jsonl").read_text().splitlines())}
        doc_ids = {item.question_id: item.meta["doc_id"] for item in read_items(name, data[name], prompts="lmms_eval")}
        assert set(doc_ids.values()) <= set(samples) and len(answers) == len(doc_ids)
        prompts_equal = sum(answers[q]["prompt"] == samples[d]["input"] for q, d in doc_ids.items())
        theirs_text = {q: samples[d].get("resps", samples[d]["filtered_resps"]) for q, d in doc_ids.items()}
        answers_equal = sum(answers[q]["text"] == theirs_text[q] for q in doc_ids)
        if name == "mmbench":  # a question's score is that of its rotations together: MMBench_Evaluator on lmms-eval's answers
            import pandas as pd

            evaluator = task_utils("mmbench.en_utils").mmbench_evaluator
            docs = {item.meta["doc_id"]: item.meta["doc"] for item in read_items(name, data[name], prompts="lmms_eval")}
            frame = pd.DataFrame([{**_literal(samples[d]["gpt_eval_score"]), **{c: docs[d].get(c) for c in "ABCD"}} for d in samples])
            answer_of = dict(zip(frame["index"], frame["answer"]))
            theirs_score = {str(i): float(evaluator.eval_sub_data(frame[frame["index"] % 1_000_000 == i % 1_000_000].sort_values("index"),
                                                                  answer_of, static_only=True)) for i in frame["index"]}
            scores_equal = sum(scores[q] == theirs_score[q] for q in doc_ids)
        else:
            scores_equal = sum(scores[q] == _per_item_score(name, samples[d]) for q, d in doc_ids.items())
        assert {q: answers[q]["text"] for q in doc_ids} == first_pass[name]  # the ground truth changed, nothing else
        for theirs_key, ours_key, scale in AGGREGATES[name]:
            assert summary[ours_key] == pytest.approx(scale * results["results"][f"rc_{name}"][theirs_key]), (name, theirs_key)
        parity[name] = (len(doc_ids), prompts_equal, answers_equal, scores_equal, int(sum(scores.values())))
    table = {name: dict(zip(("items", "prompts", "answers", "scores", "right"), counts)) for name, counts in parity.items()}
    print("lmms-eval parity: " + json.dumps(table), file=sys.stderr)
    assert all(counts[0] == counts[1] == counts[2] == counts[3] for counts in parity.values()), parity
    assert sum(counts[0] for counts in parity.values()) >= 50 and sum(counts[4] for counts in parity.values()) >= 10
