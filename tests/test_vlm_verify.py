"""`reasonclip verify VLM --encoder ENC`: what the tower is, at the feature the projector reads.

equal (bitwise), fine-tuned from ENC (weights moved a little, features still follow the encoder), not ENC
(a different encoder of the same shape: the issue's probe, a random tower with 33 of 64 tensors changed
and relative change 1.24, used to pass as ok).
"""

import json
import math
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPModel, SiglipModel

from reasonclip_llava.cli import main
from reasonclip_llava.testing.tiny import save_tiny_clip
from reasonclip_llava.testing.tiny_vlm import save_tiny_vlm
from reasonclip_llava.vlm.swap import swap_vision_tower
from reasonclip_llava.vlm.tower_check import FINE_TUNED_MAX_CHANGE, verify_vlm_tower


@pytest.fixture(scope="module")
def vlms(tmp_path_factory, tiny_clip_dir):
    root = tmp_path_factory.mktemp("verify")
    llava = swap_vision_tower(save_tiny_vlm(root / "llava", "llava"), tiny_clip_dir, root / "llava-swapped")
    return {"root": root, "llava": llava}


def perturbed_encoder(source, out, scale, seed=0):
    """The encoder with every vision weight moved by `scale` x its own std (a stand-in for fine-tuning)."""
    model = CLIPModel.from_pretrained(source)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.vision_model.parameters():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * scale * (tensor.std() if tensor.numel() > 1 else 1))
    shutil.copytree(source, out)
    model.save_pretrained(out)
    return out


def relative_change(a, b):
    delta = torch.cat([(b[k].double() - t.double()).flatten() for k, t in a.items()])
    return float(delta.norm() / torch.cat([t.double().flatten() for t in a.values()]).norm())


def test_a_different_encoder_is_named_as_such(vlms, tmp_path, capsys):
    other = save_tiny_clip(tmp_path / "other", seed=7)
    assert main(["verify", str(vlms["llava"]), "--encoder", str(other)]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["verdict"] == "not ENC" and report["failed"] == ["not_encoder"]
    assert "verify: not ENC" in captured.err
    assert report["relative_change"] > FINE_TUNED_MAX_CHANGE and abs(report["towers"][0]["feature_correlation"]) < 0.5
    assert main(["verify", str(vlms["llava"]), "--encoder", str(other), "--expect-different"]) == 0
    capsys.readouterr()


def test_the_issue_probe_random_tower_is_not_ok(tmp_path, tiny_siglip_dir):
    # a PaliGemma built from its config holds a random SigLIP tower: its LayerNorms equal the encoder's
    # (ones / zeros) and the rest differ -- the probe of the issue (33 of 64 changed, relative change 1.24)
    vlm = save_tiny_vlm(tmp_path / "pg", "paligemma")
    report = verify_vlm_tower(vlm, tiny_siglip_dir)
    assert report["verdict"] == "not ENC" and not report["ok"]
    assert report["tensors"] == 64 and 0 < report["tensors_changed"] < 64
    # the tower as saved (flat 5.x names or the Hub layout, with or without the model. prefix)
    tower = load_file(vlm / "model.safetensors")
    found = {re.sub(r"^(model\.)?vision_tower\.(vision_model\.)?", "", k): v for k, v in tower.items() if "vision_tower." in k}
    encoder = SiglipModel.from_pretrained(tiny_siglip_dir).vision_model.state_dict()
    assert report["relative_change"] == pytest.approx(relative_change(encoder, found))
    assert report["relative_change"] > 1.0


def test_a_slightly_moved_tower_is_fine_tuned_from_the_encoder(vlms, tiny_clip_dir, tmp_path, capsys):
    tuned = perturbed_encoder(tiny_clip_dir, tmp_path / "tuned", scale=0.02)
    moved = swap_vision_tower(vlms["llava"], tuned, tmp_path / "moved")
    assert main(["verify", str(moved), "--encoder", str(tiny_clip_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "fine-tuned from ENC" and not report["towers"][0]["features_bitwise_equal"]
    base = CLIPModel.from_pretrained(tiny_clip_dir).vision_model.state_dict()
    after = CLIPModel.from_pretrained(tuned).vision_model.state_dict()
    assert report["relative_change"] == pytest.approx(relative_change(base, after))
    layer0 = {k: v for k, v in base.items() if k.startswith("encoder.layers.0.")}
    assert report["per_layer_relative_change"]["encoder.layers.0"] == pytest.approx(relative_change(layer0, after))
    assert report["towers"][0]["feature_correlation"] > 0.9
    assert main(["verify", str(moved), "--encoder", str(tiny_clip_dir), "--require-equal"]) == 1
    assert json.loads(capsys.readouterr().out)["failed"] == ["bitwise_equal"]


def test_a_nan_in_the_tower_fails(vlms, tiny_clip_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(vlms["llava"], broken)
    tensors = load_file(broken / "model.safetensors")
    name = next(k for k in tensors if "vision_tower" in k and k.endswith("patch_embedding.weight"))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = math.nan
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    assert main(["verify", str(broken), "--encoder", str(tiny_clip_dir)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] == ["finite", "not_encoder"] and report["nonfinite_values"] == 1
    assert main(["verify", str(broken), "--encoder", str(tiny_clip_dir), "--expect-different"]) == 1
    assert json.loads(capsys.readouterr().out)["failed"] == ["finite"]


def test_verify_refuses_bad_input_in_one_line(vlms, tmp_path, capsys):
    assert main(["verify", str(vlms["llava"]), "--encoder", str(tmp_path / "missing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["verify", str(vlms["llava"]), "--encoder", str(vlms["llava"])]) == 2  # a VLM is not an encoder
    assert "vision model_type" in capsys.readouterr().err
