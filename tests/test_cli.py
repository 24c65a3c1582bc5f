"""The `reasonclip` command end to end: pretrain -> export -> verify -> llava-build -> swap."""

import json

import pytest
import torch

from reasonclip_llava.cli import main
from reasonclip_llava.encoder import ReasonCLIPForPretraining


@pytest.mark.slow
def test_pretrain_export_verify_build_swap(tmp_path, capsys):
    from reasonclip_llava.testing.tiny_lm import build_tiny_lm
    from reasonclip_llava.pretrain.demo import prepare_tiny_workspace, tiny_recipe

    work = prepare_tiny_workspace(tmp_path / "work", num_images=24)
    run = tmp_path / "run"
    assert main(["pretrain", str(tiny_recipe("tiny_stage1")), f"--model.name_or_path={work['clip']}", f"--data.train={work['reasonlite']}",
                 f"--runtime.output_dir={run}", "--schedule.max_steps=2", "--data.batch_size=8"]) == 0
    final = run / "final"
    trained = ReasonCLIPForPretraining.from_pretrained(final)
    assert trained.info.stage == "stage1"
    base = ReasonCLIPForPretraining.from_pretrained(work["clip"])
    assert not torch.equal(trained.backbone.text_model.final_layer_norm.weight, base.backbone.text_model.final_layer_norm.weight)

    assert main(["export", str(final), str(tmp_path / "encoder")]) == 0
    assert main(["verify", str(tmp_path / "encoder"), "--base", str(work["clip"])]) == 0
    capsys.readouterr()

    lm = build_tiny_lm(tmp_path / "lm")
    assert main(["llava-build", "--lm", str(lm), "--encoder", str(work["clip"]), "--out", str(tmp_path / "llava")]) == 0
    assert main(["swap", "--llava", str(tmp_path / "llava"), "--encoder", str(tmp_path / "encoder"), "--out", str(tmp_path / "swapped")]) == 0
    config = json.loads((tmp_path / "swapped" / "config.json").read_text())
    assert config["model_type"] == "llava_next" and str(tmp_path / "encoder") in json.dumps(config)
    from transformers import LlavaNextForConditionalGeneration

    swapped = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "swapped")
    exported = ReasonCLIPForPretraining.from_pretrained(tmp_path / "encoder").backbone.vision_model.state_dict()
    for name, tensor in swapped.model.vision_tower.state_dict().items():
        assert torch.equal(tensor, exported[name]), name

    assert main(["pretrain", str(tiny_recipe("tiny_stage1")), "--schedule.max_step=2"]) == 2
    assert "schedule.max_step" in capsys.readouterr().err
