"""`reasonclip compare`: one MLLM per encoder with the same recipe, resumable, table with chance and spread."""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import CLIPModel, LlavaNextForConditionalGeneration

from reasonclip_llava.cli import main
from reasonclip_llava.compare import bootstrap_interval, check_only_encoder_differs, compare_encoders
from reasonclip_llava.data.synthetic_vqa import QUESTION_KINDS, generate_synthetic_vqa
from reasonclip_llava.evaluation.benchmarks import read_items
from reasonclip_llava.testing.tiny import save_tiny_clip
from reasonclip_llava.testing.tiny_lm import build_tiny_lm


def _recipe(vqa, root, steps=2):
    return {"data_path": str(vqa["instruct"]), "image_folder": str(root), "template": "auto",
            "mm_tunable_parts": "mm_mlp_adapter,mm_language_model", "learning_rate": 1e-3, "max_steps": steps,
            "per_device_train_batch_size": 4, "model_max_length": 512, "save_steps": 1000, "report_to": "none"}


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_clip_dir):
    root = tmp_path_factory.mktemp("compare")
    vqa = generate_synthetic_vqa(root / "data", num_images=14, num_eval=4, image_size=32, write_images=True)
    other = save_tiny_clip(root / "other_clip", seed=1)
    lm = build_tiny_lm(root / "lm", family="qwen2")
    recipe = root / "stage_b.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(vqa, root / "data")))
    out = root / "out"
    record = compare_encoders([tiny_clip_dir, other], lm, [recipe], root / "data" / "vqa_eval", out, names=["clip", "other"],
                              benchmarks=["gqa", "pope"], max_new_tokens=4)
    return {"root": root, "vqa": vqa, "other": other, "lm": lm, "recipe": recipe, "out": out, "record": record}


def test_each_arm_carries_its_encoder_and_the_same_projector_init(compared, tiny_clip_dir):
    out = compared["out"]
    for name, encoder in (("clip", tiny_clip_dir), ("other", compared["other"])):
        merged = LlavaNextForConditionalGeneration.from_pretrained(out / "arms" / name / "seed0" / "merged")
        tower = merged.model.vision_tower.state_dict()
        for key, tensor in CLIPModel.from_pretrained(encoder).vision_model.state_dict().items():
            assert torch.equal(tower[key], tensor), (name, key)
    # the built models differ in the tower only: projector and LM start identical (same seed)
    built = [load_file(out / "arms" / name / "seed0" / "built" / "model.safetensors") for name in ("clip", "other")]
    differing = {key for key in built[0] if not torch.equal(built[0][key], built[1][key])}
    assert differing and all("vision_tower" in key for key in differing)
    # the recorded recipes: identical except the arm's own model path, output dir
    recipes = [yaml.safe_load((out / "recipes" / f"{n}_seed0.yaml").read_text()) for n in ("clip", "other")]
    assert recipes[0][1]["max_steps"] == recipes[1][1]["max_steps"] == 2
    assert recipes[0][0]["build"]["encoder"] != recipes[1][0]["build"]["encoder"]


def test_table_scores_are_the_official_scorers_with_chance_and_bootstrap(compared):
    out, record, vqa = compared["out"], compared["record"], compared["vqa"]
    rows = {(r["benchmark"], r["kind"]): r for r in record["rows"]}
    assert {kind for bench, kind in rows if bench == "gqa"} == {"all", *QUESTION_KINDS}
    for name in ("clip", "other"):
        eval_dir = out / "arms" / name / "seed0" / "eval"
        gqa = json.loads((eval_dir / "gqa_summary.json").read_text())  # GQA's own breakdown by semantic type
        assert rows[("gqa", "all")]["scores"][name]["mean"] == pytest.approx(gqa["accuracy"])
        for kind in QUESTION_KINDS:
            assert rows[("gqa", kind)]["scores"][name]["mean"] == pytest.approx(gqa["per_semantic_type"][kind])
        pope = json.loads((eval_dir / "pope_summary.json").read_text())
        assert rows[("pope", "all")]["scores"][name]["mean"] == pytest.approx(pope["accuracy"])
    # chance: a uniform guess among the kind's answers, counted from the questions file
    items = read_items("gqa", vqa["gqa"])
    for kind in QUESTION_KINDS:
        answers = {item.answer for item in items if item.meta["semantic"] == kind}
        assert rows[("gqa", kind)]["chance"] == pytest.approx(100 / len(answers))
    assert rows[("gqa", "relation")]["chance"] == 50.0 and rows[("pope", "all")]["chance"] == 50.0
    diff = rows[("gqa", "all")]["diff"]["other"]
    assert diff["mean"] == pytest.approx(rows[("gqa", "all")]["scores"]["other"]["mean"] - rows[("gqa", "all")]["scores"]["clip"]["mean"])
    assert diff["low"] <= diff["mean"] + 1e-9 and diff["high"] >= diff["mean"] - 1e-9
    markdown = (out / "comparison.md").read_text()
    assert "chance" in markdown.splitlines()[2] and "95% paired bootstrap interval over items" in markdown
    assert "reading: other vs clip" in markdown
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bootstrap_interval_matches_scipy():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(1)
    first, other = rng.integers(0, 2, 60).astype(float), rng.integers(0, 2, 60).astype(float)
    low, high = bootstrap_interval(first, other, resamples=4000)
    reference = bootstrap((100 * (other - first),), np.mean, n_resamples=4000, method="percentile", random_state=2).confidence_interval
    assert low == pytest.approx(reference.low, abs=1.5) and high == pytest.approx(reference.high, abs=1.5)


def test_rerun_resumes_and_a_changed_recipe_is_refused(compared, tiny_clip_dir, capsys):
    out = compared["out"]
    weights = out / "arms" / "other" / "seed0" / "merged" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    table_before = json.loads((out / "comparison.json").read_text())["rows"]
    args = ["compare", "--encoders", str(tiny_clip_dir), str(compared["other"]), "--names", "clip", "other", "--lm", str(compared["lm"]),
            "--recipe", str(compared["recipe"]), "--data-root", str(compared["root"] / "data" / "vqa_eval"),
            "--benchmarks", "gqa", "pope", "--out", str(out), "--max-new-tokens", "4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished before, not retrained") == 2 and "| GQA | relation |" in printed
    assert weights.stat().st_mtime_ns == before
    assert json.loads((out / "comparison.json").read_text())["rows"] == table_before
    changed = compared["root"] / "stage_b_more.yaml"
    changed.write_text(yaml.safe_dump(_recipe(compared["vqa"], compared["root"] / "data", steps=3)))
    assert main([*args[:args.index("--recipe") + 1], str(changed), *args[args.index("--recipe") + 2:]]) == 2
    error = capsys.readouterr().err
    assert "stages[0].max_steps differs" in error and len(error.strip().splitlines()) == 1


def test_arms_that_differ_beyond_the_encoder_are_refused():
    arm = [{"build": {"encoder": "a", "seed": 0, "arch": "llava_next"}}, {"learning_rate": 1e-3, "seed": 0, "output_dir": "x"}]
    same = [{"build": {"encoder": "b", "seed": 0, "arch": "llava_next"}}, {"learning_rate": 1e-3, "seed": 0, "output_dir": "y"}]
    check_only_encoder_differs({"a": arm, "b": same})
    other = [same[0], {**same[1], "learning_rate": 2e-3}]
    with pytest.raises(ValueError, match=r"\[1\]\.learning_rate"):
        check_only_encoder_differs({"a": arm, "b": other})


def test_bad_input_is_one_line(tiny_clip_dir, tmp_path, capsys):
    assert main(["compare", "--encoders", str(tiny_clip_dir), "--lm", "x", "--recipe", "r.yaml", "--data-root", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    assert "at least two encoders" in capsys.readouterr().err
