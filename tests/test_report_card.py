"""Reports (markdown table + PNG) and Hugging Face model cards from real result files."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from reasonclip_llava.evaluation import card as card_module
from reasonclip_llava.evaluation.card import find_template, front_matter, write_model_card
from reasonclip_llava.evaluation.encoder import evaluate_encoder
from reasonclip_llava.evaluation.report import load_result_rows, write_report

FIXTURES = Path(__file__).parent / "fixtures" / "encoder"
IMAGES = FIXTURES / "images"
PROVENANCE = {"reasonclip_base_model": "openai/clip-vit-base-patch32", "reasonclip_stage": "stage2",
              "reasonclip_recipe": "train/stage2_b32.yaml", "reasonclip_version": "0.1.0"}


def markdown_table(text: str) -> dict[str, dict[str, str]]:
    """The first markdown table as {row label: {column: cell}} (columns without their "(chance N%)")."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [re.sub(r" \(chance [^)]*\)$", "", cell.strip()) for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(header):
            break
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


@pytest.fixture(scope="module")
def encoder_runs(tmp_path_factory, tiny_clip_dir):
    """Two 'models' (the tiny CLIP and a differently seeded one) evaluated on SugarCrepe and Winoground."""
    from reasonclip_llava.testing.tiny import save_tiny_clip

    root = tmp_path_factory.mktemp("runs")
    other = save_tiny_clip(root / "stage1_model", seed=3)
    runs = {}
    for name, model_dir in (("base", tiny_clip_dir), ("stage1", other)):
        for benchmark, data, images in (("sugarcrepe", FIXTURES / "sugarcrepe", IMAGES / "val2017"),
                                        ("winoground", FIXTURES / "winoground", IMAGES / "winoground")):
            runs.setdefault(name, []).append(evaluate_encoder(model_dir, benchmark, data, images, out_dir=root / name, model_name=name))
    return root, runs


def vqa_summary(out_dir: Path, benchmark: str, **metrics) -> Path:
    """A VQA summary written by the scoring code's own writer ({benchmark}_summary.json)."""
    from reasonclip_llava.evaluation.scoring import ScoreResult, write_outputs

    summary = {"benchmark": benchmark, "mode": "official", **metrics, "n": 3, "missing": 0, "extra": 0}
    return write_outputs(out_dir, benchmark, ScoreResult(summary, [{"question_id": 1, "prediction": "yes", "score": 1.0}]))[1]


# ---- report -----------------------------------------------------------------------------------------


def test_report_table_carries_every_models_headline_numbers(encoder_runs, tmp_path):
    root, runs = encoder_runs
    vqa_summary(root / "stage1", "gqa", accuracy=61.25)
    vqa_summary(root / "stage1", "mme", score=1420.0)
    (root / "stage1" / "config.json").write_text(json.dumps({"model_type": "clip"}))  # not a result: skipped
    markdown, png = write_report([root / "base", root / "stage1"], tmp_path / "report")
    table = markdown_table(markdown.read_text())
    assert list(table) == ["base", "stage1"]
    for name, records in runs.items():
        for record in records:
            for column, value in record["headline"].items():
                assert table[name][column] == f"{value:.1f}"
    assert table["stage1"]["GQA"] == "61.2" and table["stage1"]["MME"] == "1420.0"
    assert table["base"]["GQA"] == "–"  # not evaluated
    assert "Not plotted (not a percentage): MME" in markdown.read_text()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_report_details_keep_every_subset(encoder_runs, tmp_path):
    root, runs = encoder_runs
    markdown, _ = write_report([root / "base"], tmp_path)
    text = markdown.read_text()
    section = text.split("### sugarcrepe")[1]
    details = markdown_table(section)
    sugarcrepe = runs["base"][0]
    assert [c for c in details["base"] if not c.startswith(("macro", "micro"))] == list(sugarcrepe["subsets"])
    assert details["base"]["add_obj"] == f"{sugarcrepe['subsets']['add_obj']['accuracy']:.1f}"


def test_labelled_folders_files_and_latest_rerun(tmp_path):
    first = vqa_summary(tmp_path / "run_a", "pope", accuracy=80.0)
    rerun = tmp_path / "run_a_again" / "pope_summary.json"
    rerun.parent.mkdir()
    rerun.write_text(json.dumps({"model": "llava-stage2", "benchmark": "pope", "accuracy": 85.0}))
    os.utime(first, (1_000_000, 1_000_000))  # older
    rows = load_result_rows([f"llava-stage2={tmp_path / 'run_a'}", rerun])
    assert {(row.model, row.value) for row in rows} == {("llava-stage2", 80.0), ("llava-stage2", 85.0)}
    markdown, _ = write_report([f"llava-stage2={tmp_path / 'run_a'}", rerun], tmp_path / "out")
    assert markdown_table(markdown.read_text())["llava-stage2"]["POPE"] == "85.0"  # the newer file wins
    assert "| POPE (chance 50%) |" in markdown.read_text()  # yes / no: chance named in the header


def test_chart_draws_each_chance_level_as_a_labelled_dashed_line(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from reasonclip_llava.evaluation import report

    drawn = {}
    original = Figure.savefig

    def keep(figure, path, *args, **kwargs):
        drawn["axes"] = figure.axes[0]
        return original(figure, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    report.grouped_bar_chart(tmp_path / "c.png", ["POPE", "GQA"], {"a": [60.0, 30.0], "b": [55.0, None]}, [50.0, None],
                             title="t", ylabel="accuracy (%)")
    axes = drawn["axes"]
    dashed = [c for c in axes.collections if c.get_linestyle()[0][1] is not None]  # hlines with a dash pattern
    assert len(dashed) == 1 and dashed[0].get_segments()[0][0][1] == 50.0  # only POPE has a chance level
    assert "chance" in [t.get_text() for t in axes.get_legend().get_texts()]
    assert axes.get_ylabel() == "accuracy (%)" and axes.get_xlabel() == "benchmark"
    assert Image.open(tmp_path / "c.png").size[0] <= 1800  # natural size fits a README column


def test_report_input_errors_name_the_path(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match=r"config\.json: not a result JSON"):
        load_result_rows([tmp_path / "config.json"])
    with pytest.raises(ValueError, match="no result JSON found"):
        load_result_rows([tmp_path])
    with pytest.raises(FileNotFoundError, match="missing_run"):
        load_result_rows([tmp_path / "missing_run"])


# ---- model cards ------------------------------------------------------------------------------------


@pytest.fixture
def exported_clip(tiny_clip_dir, tmp_path):
    """The tiny CLIP as the export leaves it: provenance in config.json and the export's short README."""
    model_dir = Path(shutil.copytree(tiny_clip_dir, tmp_path / "reasonclip-b32-stage2"))
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, **PROVENANCE}))
    (model_dir / "README.md").write_text("---\nlibrary_name: transformers\n---\n# ReasonCLIP encoder (stage2)\n")
    return model_dir


def test_card_front_matter_parses_and_carries_the_numbers(exported_clip, encoder_runs):
    root, runs = encoder_runs
    results = [record["path"] for record in runs["base"]]
    path = write_model_card(exported_clip, results)
    text = path.read_text()
    front = yaml.safe_load(re.match(r"---\n(.*?)\n---\n", text, re.S).group(1))
    assert front == front_matter(text)
    assert (front["library_name"], front["pipeline_tag"]) == ("transformers", "zero-shot-image-classification")
    assert front["base_model"] == "openai/clip-vit-base-patch32"
    assert {"reasonclip", "clip", "stage2"} <= set(front["tags"])
    (entry,) = front["model-index"]
    assert entry["name"] == "reasonclip-b32-stage2"
    metrics = {m["name"]: m for result in entry["results"] for m in result["metrics"]}
    for record in runs["base"]:
        for column, value in record["headline"].items():
            assert metrics[column]["value"] == pytest.approx(round(value, 2))
            assert metrics[column]["type"] == "accuracy"
    datasets = {result["dataset"]["name"]: result for result in entry["results"]}
    assert datasets["Winoground"]["dataset"] == {"name": "Winoground", "type": "facebook/winoground", "split": "test"}
    assert datasets["SugarCrepe"]["task"]["type"] == "zero-shot-image-classification"
    for section in ("## Intended use", "## How to load", "## Training recipe", "## Evaluation results", "## Limitations"):
        assert section in text
    assert "CLIPModel.from_pretrained" in text and "category-structured" in text and "train/stage2_b32.yaml" in text
    # The export's README is kept, not lost; a second run replaces only our own card.
    assert (exported_clip / "README.previous.md").read_text().startswith("---\nlibrary_name")
    write_model_card(exported_clip, results)
    assert (exported_clip / "README.previous.md").read_text().startswith("---\nlibrary_name")


def test_card_load_snippet_runs(exported_clip):
    text = write_model_card(exported_clip, [], model_name=str(exported_clip)).read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(code.replace("image.jpg", str(IMAGES / "val2017" / "000000000001.jpg")), namespace)
    assert tuple(namespace["probs"].shape) == (1, 2)
    assert float(namespace["probs"].sum()) == pytest.approx(1.0, abs=1e-5)
    assert "model-index" not in front_matter(text) and "No evaluation results" in text


def test_card_for_siglip_and_local_base_model(tiny_siglip_dir, tmp_path):
    model_dir = Path(shutil.copytree(tiny_siglip_dir, tmp_path / "siglip"))
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "reasonclip_base_model": str(tiny_siglip_dir)}))
    text = write_model_card(model_dir).read_text()
    front = front_matter(text)
    assert "base_model" not in front  # a local path is not a Hub id
    assert "siglip" in front["tags"] and "SiglipModel.from_pretrained" in text and 'padding="max_length"' in text
    assert "No training stage recorded" in text


def test_card_for_llava_next_with_vqa_results(tmp_path):
    model_dir = tmp_path / "llava-next-reasonclip"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llava_next", "reasonclip_vision_tower": "runs/stage2/export",
                                                       "text_config": {"model_type": "qwen3"}, "vision_config": {"model_type": "clip_vision_model"}}))
    results = [vqa_summary(tmp_path / "eval", "gqa", accuracy=60.5), vqa_summary(tmp_path / "eval", "mme", score=1450.25)]
    text = write_model_card(model_dir, results).read_text()
    front = front_matter(text)
    assert front["pipeline_tag"] == "image-text-to-text" and "llava-next" in front["tags"]
    results_by_name = {r["dataset"]["name"]: r for r in front["model-index"][0]["results"]}
    assert results_by_name["GQA"]["metrics"] == [{"type": "accuracy", "value": 60.5, "name": "GQA"}]
    assert results_by_name["MME"]["metrics"][0]["type"] == "score"
    assert results_by_name["GQA"]["task"]["type"] == "visual-question-answering"
    assert "LlavaNextForConditionalGeneration.from_pretrained" in text and "runs/stage2/export" in text


def test_packaged_templates_match_the_repository_copies():
    repo = Path(__file__).parents[1] / "model_cards"
    packaged = Path(card_module.__file__).parent / "templates"
    for name in (card_module.ENCODER_TEMPLATE, card_module.LLAVA_TEMPLATE):
        assert (repo / name).read_text() == (packaged / name).read_text()
        assert find_template(name) == repo / name  # source checkout: the repository copy first


def test_template_errors(exported_clip, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.md"):
        write_model_card(exported_clip, [], template=tmp_path / "nope.md")
    broken = tmp_path / "broken.md"
    broken.write_text("---\n$front_matter\n---\n# $title\n$not_a_field\n")
    with pytest.raises(ValueError, match=r"unknown placeholder \$not_a_field"):
        write_model_card(exported_clip, [], template=broken)
    assert (exported_clip / "README.md").read_text().startswith("---\nlibrary_name: transformers\n---\n# ReasonCLIP")  # untouched
    # Installed without the repository folder: the packaged copy is found.
    monkeypatch.setattr(card_module, "REPO_TEMPLATES", tmp_path / "no_repo")
    assert find_template(card_module.ENCODER_TEMPLATE).parent.name == "templates"
