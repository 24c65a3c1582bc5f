"""`reasonclip demo --quick`: the whole pipeline end to end on tiny models (the README's main command)."""

import json

import pytest
import torch
from transformers import CLIPModel, LlavaNextForConditionalGeneration

from reasonclip_llava.cli import main


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path, capsys):
    assert main(["demo", "--quick", "--work-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
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
    llava = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "llava" / "merged")
    tower = llava.model.vision_tower.state_dict()
    for name, tensor in stage2.vision_model.state_dict().items():
        assert torch.equal(tower[name], tensor), name
    report = (tmp_path / "eval" / "report.md").read_text()
    rows = [line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| ") and not line.startswith("| Model")]
    assert {"base", "stage1", "stage2", "llava_next+stage2"} <= set(rows)
    header = next(line for line in report.splitlines() if line.startswith("| Model"))
    assert all(column in header for column in ("RCLIP-Bench", "SugarCrepe", "GQA", "POPE"))
