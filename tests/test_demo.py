"""`reasonclip demo --quick`: the whole pipeline end to end on tiny models (the README's main command)."""

import json

import pytest
import torch
from transformers import CLIPModel, LlavaNextForConditionalGeneration

from reasonclip_llava.cli import main


def _tables(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ") or line.startswith("reading:")]


@pytest.mark.slow
def test_demo_runs_every_stage_and_reruns(tmp_path, capsys):
    assert main(["demo", "--quick", "--work-dir", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    first_report = (tmp_path / "eval" / "report.md").read_text()
    (tmp_path / "my_notes.txt").write_text("kept")  # not the demo's: a rerun leaves it
    # the README's main command, a second time in the same folder: replaces only what the demo wrote
    assert main(["demo", "--quick", "--work-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert _tables(printed) == _tables(first) and _tables(printed)
    assert _tables((tmp_path / "eval" / "report.md").read_text()) == _tables(first_report)
    assert (tmp_path / "my_notes.txt").read_text() == "kept"
    for stage in ("stage 1", "verify", "original LLaVA", "LLaVA-NeXT", "answers", "evaluation"):
        assert stage in printed, stage
    # the learning table: every column with its chance level, each stage's row, and the one-line reading
    header = next(line for line in printed.splitlines() if line.startswith("| encoder"))
    assert header.count("(chance") == 3 and "reasoning 5-way (chance 20.0%)" in header
    assert {"base", "stage0 reasoning", "stage1", "stage2"} <= {line.split("|")[1].strip() for line in printed.splitlines() if line.startswith("| ")}
    assert "reading: stage1 (vs base): reasoning 5-way" in printed
    assert "{'loss'" not in printed  # progress bars and summary lines, not a dict per step
    # the encoders are plain CLIPs; stage 2 moved away from stage 1
    stage1, stage2 = (CLIPModel.from_pretrained(tmp_path / "encoders" / s) for s in ("stage1", "stage2"))
    assert json.loads((tmp_path / "encoders" / "stage2" / "config.json").read_text())["reasonclip_stage"] == "stage2"
    assert not torch.equal(stage1.vision_model.encoder.layers[0].mlp.fc1.weight, stage2.vision_model.encoder.layers[0].mlp.fc1.weight)
    # the MLLM reloads with plain transformers and carries the stage-2 tower bitwise
    # the MLLM table: both encoders inside the same recipe, per question kind, chance and the spread named
    header = next(line for line in printed.splitlines() if line.startswith("| benchmark | kind"))
    assert "chance %" in header and "stage2 − base" in header and "bootstrap" in header
    kinds = {line.split(" | ")[1] for line in printed.splitlines() if line.startswith("| GQA") or line.startswith("| POPE")}
    assert {"relation (needs relation)", "which_side (needs relation)", "colour_of_shape (needs attribute binding)",
            "random (needs neither (presence, POPE))"} <= kinds
    assert "reading: stage2 vs base:" in printed
    recipes = [(tmp_path / "llava" / "recipes" / f"{name}_seed0.yaml").read_text() for name in ("base", "stage2")]
    assert recipes[0].replace("/base", "/stage2") == recipes[1]  # only the encoder (and the arm's own paths) differs
    llava = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "llava" / "arms" / "stage2" / "seed0" / "merged")
    tower = llava.model.vision_tower.state_dict()
    for name, tensor in stage2.vision_model.state_dict().items():
        assert torch.equal(tower[name], tensor), name
    report = (tmp_path / "eval" / "report.md").read_text()
    rows = [line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| ") and not line.startswith("| Model")]
    assert {"base", "stage1", "stage2", "llava_next+base", "llava_next+stage2"} <= set(rows)
    header = next(line for line in report.splitlines() if line.startswith("| Model"))
    assert all(column in header for column in ("RCLIP-Bench", "(chance 20%)", "SugarCrepe", "GQA", "POPE (chance 50%)"))


def test_demo_refuses_a_folder_that_is_not_its_own(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("mine")
    assert main(["demo", "--quick", "--work-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "is not a demo folder" in error and len(error.splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]
