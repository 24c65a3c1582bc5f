"""Suites: one checkpoint + a data root (the fixture trees use the documented layout) -> all results."""

import json
import shutil
from pathlib import Path

import pytest

from reasonclip_llava.cli import main
from reasonclip_llava.evaluation.encoder import evaluate_encoder
from reasonclip_llava.evaluation.scoring import score_answers
from reasonclip_llava.evaluation.suite import ENCODER_LAYOUT, VQA_LAYOUT, run_encoder_suite, run_vqa_suite

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory):
    from reasonclip_llava.testing.tiny_llava import save_tiny_llava_next

    return save_tiny_llava_next(tmp_path_factory.mktemp("llava"))


def test_vqa_suite_scores_every_benchmark_like_the_scorer(tiny_llava_dir, tmp_path):
    summary = run_vqa_suite(tiny_llava_dir, FIXTURES / "vqa", tmp_path, limit=4, batch_size=4, progress=False,
                            max_new_tokens=8)
    assert set(summary["results"]) == set(VQA_LAYOUT) and summary["skipped"] == []
    for name, entry in VQA_LAYOUT.items():
        answers = tmp_path / f"{name}_answers.jsonl"
        header, *rows = map(json.loads, answers.read_text().splitlines())
        ids = [row["question_id"] for row in rows]
        assert header["header"]["identity"]["benchmark"] == name and header["header"]["identity"]["generation"]["max_new_tokens"] == 8
        assert 1 <= len(ids) <= 4 and len(set(ids)) == len(ids), name
        annotations = FIXTURES / "vqa" / entry.get("annotations", entry["data"])
        expected = score_answers(name, answers, annotations, questions=answers)
        written = json.loads(Path(summary["results"][name]).read_text())
        headline = "score" if name == "mme" else "accuracy"
        assert written[headline] == expected[headline], name
    table = Path(summary["report"][0]).read_text()
    header = next(line for line in table.splitlines() if line.startswith("| Model"))
    assert all(column in header for column in ("POPE", "MME", "VQAv2", "GQA", "ChartQA", "MMBench"))
    assert Path(summary["report"][1]).stat().st_size > 1000  # the PNG chart


def test_vqa_suite_skips_absent_benchmarks_and_resumes(tiny_llava_dir, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "vqa" / "pope", root / "pope")
    out = tmp_path / "out"
    first = run_vqa_suite(tiny_llava_dir, root, out, limit=3, batch_size=2, progress=False, max_new_tokens=8)
    assert list(first["results"]) == ["pope"] and set(first["skipped"]) == set(VQA_LAYOUT) - {"pope"}
    answers = (out / "pope_answers.jsonl").read_text()
    again = run_vqa_suite(tiny_llava_dir, root, out, benchmarks=["pope"], limit=3, batch_size=2, progress=False, max_new_tokens=8)
    assert (out / "pope_answers.jsonl").read_text() == answers and again["skipped"] == []
    with pytest.raises(ValueError, match="unknown benchmark"):
        run_vqa_suite(tiny_llava_dir, root, out, benchmarks=["pope", "nocaps"])


def test_encoder_suite_matches_single_runs_and_layout_override(tiny_clip_dir, tmp_path):
    summary = run_encoder_suite(tiny_clip_dir, FIXTURES / "encoder", tmp_path / "suite", batch_size=16)
    assert set(summary["results"]) == set(ENCODER_LAYOUT) and not summary["skipped"]
    for name in ("winoground", "sugarcrepe"):
        entry = ENCODER_LAYOUT[name]
        single = evaluate_encoder(tiny_clip_dir, name, FIXTURES / "encoder" / entry["data"], FIXTURES / "encoder" / entry["images"])
        suite_result = json.loads(Path(summary["results"][name]).read_text())
        assert suite_result["headline"] == single["headline"], name
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"winoground": {"data": "winoground", "images": "images/winoground"}}))
    override = run_encoder_suite(tiny_clip_dir, FIXTURES / "encoder", tmp_path / "override", benchmarks=["winoground"], layout=layout)
    assert list(override["results"]) == ["winoground"]


def test_cli_eval_vqa_and_suite(tiny_llava_dir, tmp_path, capsys):
    pope = FIXTURES / "vqa" / "pope"
    out = tmp_path / "answers.jsonl"
    assert main(["eval", "vqa", "--model", str(tiny_llava_dir), "--benchmark", "pope", "--data", str(pope), "--images", str(pope / "val2014"), "--out", str(out), "--limit", "2", "--max-new-tokens", "8", "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()][1:]  # after the header
    assert len(rows) == 2 and all({"question_id", "text", "prompt", "model_id"} <= set(r) for r in rows)
    assert main(["eval", "suite", "encoder", "--model", str(tiny_llava_dir), "--data-root", str(FIXTURES / "encoder"), "--out", str(tmp_path / "bad")]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("reasonclip eval: error:") and str(tiny_llava_dir) in last_line and "CLIP/SigLIP" in last_line


def test_suites_never_write_into_the_data_root(tiny_llava_dir, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "vqa" / "mmbench", root / "mmbench")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    summary = run_vqa_suite(tiny_llava_dir, root, tmp_path / "out", benchmarks=["mmbench"], limit=2, batch_size=2, progress=False,
                            max_new_tokens=8)
    assert list(summary["results"]) == ["mmbench"]
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert any((tmp_path / "out" / "mmbench_images").iterdir())
