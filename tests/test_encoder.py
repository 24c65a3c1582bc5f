"""Encoder classes: training checkpoints, export, verify, the LLaVA tower, real sizes on the meta device."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, CLIPConfig, CLIPModel, CLIPVisionModel, SiglipConfig, SiglipModel, SiglipVisionModel

from reasonclip_llava.encoder import (
    HeadsConfig,
    ReasonCLIPForPretraining,
    ReasonCLIPVisionTower,
    export_encoder,
    verify_export,
)
from reasonclip_llava.encoder.flops import vision_flops_per_image
from reasonclip_llava.encoder.modeling import HEADS_FILE, TRAINING_FILE


def _perturb(model: ReasonCLIPForPretraining, amount: float = 0.05) -> None:
    """Stand-in for training: move every backbone weight so an export differs from its base."""
    with torch.no_grad():
        for parameter in model.backbone.parameters():
            parameter.add_(amount * torch.randn_like(parameter))


@pytest.fixture()
def trained_clip(tiny_clip_dir, tmp_path):
    model = ReasonCLIPForPretraining.from_pretrained(tiny_clip_dir, heads=HeadsConfig(category_heads=True, recon_dim=16))
    _perturb(model)
    model.info.stage, model.info.recipe = "stage2", "tiny_stage2.yaml"
    return model, model.save_pretrained(tmp_path / "train_ckpt", source=tiny_clip_dir)


def test_training_checkpoint_round_trip_keeps_heads(trained_clip):
    model, ckpt = trained_clip
    assert (ckpt / HEADS_FILE).is_file() and (ckpt / TRAINING_FILE).is_file()
    reloaded = ReasonCLIPForPretraining.from_pretrained(ckpt)
    assert reloaded.info.stage == "stage2" and reloaded.heads_config.category_heads and reloaded.heads_config.recon_dim == 16
    for name, tensor in model.head_state_dict().items():
        assert torch.equal(tensor, reloaded.head_state_dict()[name]), name
    for (name, a), (_, b) in zip(model.backbone.state_dict().items(), reloaded.backbone.state_dict().items()):
        assert torch.equal(a, b), name


def test_encode_matches_transformers_features(tiny_clip_dir, clip_tokenizer):
    model = ReasonCLIPForPretraining.from_pretrained(tiny_clip_dir).eval()
    reference = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    text = clip_tokenizer(["a red circle left of a blue square", "a cat"], padding=True, return_tensors="pt")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = reference(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels)
        text_embeds, pooled = model.encode_text(text.input_ids, text.attention_mask)
        image_embeds = model.encode_image(pixels)
    assert torch.allclose(text_embeds, out.text_embeds * text_embeds.norm(dim=-1, keepdim=True), atol=1e-6)
    assert torch.allclose(image_embeds, out.image_embeds * image_embeds.norm(dim=-1, keepdim=True), atol=1e-6)
    # pooled = EOS state before projection: the argmax-id position for CLIP's original tokenizer layout
    eos_positions = text.attention_mask.sum(-1) - 1
    last_hidden = out.text_model_output.last_hidden_state
    assert torch.allclose(pooled, last_hidden[torch.arange(2), eos_positions], atol=1e-6)


def test_export_is_a_plain_strict_clip_with_provenance(trained_clip, tiny_clip_dir, tmp_path):
    model, ckpt = trained_clip
    out = export_encoder(ckpt, tmp_path / "export")
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json", "README.md"} <= files
    assert HEADS_FILE not in files and TRAINING_FILE not in files
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "clip"
    assert config["reasonclip_stage"] == "stage2" and config["reasonclip_base_model"] == str(tiny_clip_dir)
    loaded, info = CLIPModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(AutoModel.from_pretrained(out)) is CLIPModel
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert not any(key.startswith(("category_heads", "recon_projector")) for key in load_file(str(out / "model.safetensors")))


def test_export_refuses_added_weights_and_keeps_existing_output(trained_clip, tmp_path):
    _, ckpt = trained_clip
    weights = load_file(str(ckpt / "model.safetensors"))
    weights["text_model.extra_adapter.weight"] = torch.zeros(2, 2)
    save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="extra_adapter"):
        export_encoder(ckpt, tmp_path / "bad_export")
    assert not (tmp_path / "bad_export").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        export_encoder(ckpt, existing)
    assert (existing / "keep.txt").read_text() == "precious"


def test_export_refuses_missing_weights(trained_clip, tmp_path):
    _, ckpt = trained_clip
    weights = load_file(str(ckpt / "model.safetensors"))
    del weights["vision_model.post_layernorm.weight"]
    save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="post_layernorm"):
        export_encoder(ckpt, tmp_path / "bad_export")


def test_non_clip_checkpoint_is_named(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert'"):
        ReasonCLIPForPretraining.from_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="bert"):
        export_encoder(tmp_path / "bert", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        export_encoder(tmp_path / "missing_dir", tmp_path / "out")


def test_verify_passes_and_features_are_bitwise(trained_clip, tiny_clip_dir, tmp_path):
    _, ckpt = trained_clip
    out = export_encoder(ckpt, tmp_path / "export")
    report = verify_export(out, tiny_clip_dir)
    assert report["ok"], report["failed"]
    assert report["checks"]["tower_features_bitwise_equal"]["detail"]["max_abs_diff"] == 0.0
    flops = report["checks"]["flops_per_image_equal"]["detail"]
    assert flops["base_flops_per_image"] == flops["export_flops_per_image"] > 0


def test_verify_names_the_failing_check(trained_clip, tmp_path):
    _, ckpt = trained_clip
    out = export_encoder(ckpt, tmp_path / "export")
    other_base = tmp_path / "wider_base"
    from reasonclip_llava.testing.tiny import save_tiny_clip

    save_tiny_clip(other_base, intermediate_size=96)
    report = verify_export(out, other_base)
    assert not report["ok"]
    assert "architecture_config_equal" in report["failed"] and "parameters_equal" in report["failed"]
    assert "flops_per_image_equal" in report["failed"]
    assert any("intermediate_size" in line for line in report["checks"]["architecture_config_equal"]["detail"])


@pytest.mark.parametrize("feature, expected_tokens", [("patch", 16), ("cls_patch", 17)])
def test_tower_matches_clip_vision_model(tiny_clip_dir, feature, expected_tokens):
    args = SimpleNamespace(mm_vision_select_layer=-2, mm_vision_select_feature=feature)
    tower = ReasonCLIPVisionTower(tiny_clip_dir, args)
    reference = CLIPVisionModel.from_pretrained(tiny_clip_dir)
    images = torch.randn(3, 3, 32, 32)
    hidden = reference(pixel_values=images, output_hidden_states=True).hidden_states[-2]
    expected = hidden[:, 1:] if feature == "patch" else hidden
    features = tower(images)
    assert features.shape == (3, expected_tokens, 32) and torch.equal(features, expected)
    per_image = tower([images[0], images[1]])
    assert [f.shape for f in per_image] == [(1, expected_tokens, 32)] * 2
    assert torch.allclose(per_image[1][0], expected[1], atol=1e-6)
    assert (tower.hidden_size, tower.image_size, tower.num_patches_per_side, tower.num_patches) == (32, 32, 4, 16)
    assert tower.dtype == torch.float32 and tower.device.type == "cpu" and tower.image_processor is not None
    assert tower.dummy_feature.shape == (1, 32)


def test_tower_delay_load_and_trainable_when_unfrozen(tiny_clip_dir):
    tower = ReasonCLIPVisionTower(tiny_clip_dir, SimpleNamespace(mm_vision_select_layer=-1), delay_load=True)
    assert not tower.is_loaded and tower.config.hidden_size == 32 and tower.num_patches == 16
    tower.load_model()
    assert not any(p.requires_grad for p in tower.parameters())  # frozen by default, as LLaVA
    tower.vision_tower.requires_grad_(True)
    tower(torch.randn(2, 3, 32, 32)).pow(2).mean().backward()
    assert tower.vision_tower.encoder.layers[0].mlp.fc1.weight.grad.abs().sum() > 0


def test_tower_rejects_bad_select_feature_and_siglip_cls(tiny_clip_dir, tiny_siglip_dir):
    with pytest.raises(ValueError, match="mm_vision_select_feature.*'cls'"):
        ReasonCLIPVisionTower(tiny_clip_dir, SimpleNamespace(mm_vision_select_feature="cls"), delay_load=True)
    with pytest.raises(ValueError, match="SigLIP"):
        ReasonCLIPVisionTower(tiny_siglip_dir, SimpleNamespace(mm_vision_select_feature="cls_patch"), delay_load=True)


def test_siglip_tower_keeps_all_tokens_and_exports(tiny_siglip_dir, tmp_path):
    tower = ReasonCLIPVisionTower(tiny_siglip_dir, SimpleNamespace(mm_vision_select_layer=-2))
    images = torch.randn(2, 3, 32, 32)
    reference = SiglipVisionModel.from_pretrained(tiny_siglip_dir)
    assert torch.equal(tower(images), reference(pixel_values=images, output_hidden_states=True).hidden_states[-2])
    assert tower.num_patches == 16 and tower(images).shape[1] == 16  # no CLS token to drop
    model = ReasonCLIPForPretraining.from_pretrained(tiny_siglip_dir, heads=HeadsConfig(category_heads=True))
    _perturb(model)
    out = export_encoder(model.save_pretrained(tmp_path / "ckpt", source=tiny_siglip_dir), tmp_path / "export")
    assert type(AutoModel.from_pretrained(out)) is SiglipModel
    assert verify_export(out, tiny_siglip_dir)["ok"]


def _write_config(directory, config):
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    return directory


def test_real_sizes_on_meta_device(tmp_path):
    l14 = CLIPConfig(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24, image_size=336, patch_size=14),
        projection_dim=768,
    )
    so400m = SiglipConfig(
        text_config=dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27, max_position_embeddings=64),
        vision_config=dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27, image_size=384, patch_size=14),
    )
    expected = {"l14": (l14, 576, 1024, 24 * 24), "so400m": (so400m, 729, 1152, 27 * 27)}
    for name, (config, patches, hidden, grid) in expected.items():
        tower = ReasonCLIPVisionTower(_write_config(tmp_path / name, config), delay_load=True)
        assert (tower.num_patches, tower.hidden_size, tower.num_patches_per_side**2) == (patches, hidden, grid)
        tower.load_empty("meta")
        assert tower.device.type == "meta"
        features = tower(torch.empty(1, 3, tower.image_size, tower.image_size, device="meta"))
        assert features.shape == (1, patches, hidden)
    # ViT-L/14-336 vision tower: 303.5M parameters; FLOPs are counted without memory on meta
    tower = ReasonCLIPVisionTower(tmp_path / "l14", delay_load=True)
    tower.load_empty("meta")
    assert sum(p.numel() for p in tower.parameters()) == 303_507_456
    flops = vision_flops_per_image(tower.vision_tower, 336)
    # 2 * params-in-matmuls * tokens dominates: 24 layers * 12.6M * 577 tokens * 2 ~= 0.35 TFLOP
    assert 3.4e11 < flops < 4.2e11


def test_cli_export_verify_and_errors(trained_clip, tiny_clip_dir, tmp_path, capsys):
    from reasonclip_llava.cli import main

    _, ckpt = trained_clip
    out = tmp_path / "cli_export"
    assert main(["export", str(ckpt), str(out)]) == 0
    assert main(["verify", str(out), "--base", str(tiny_clip_dir)]) == 0
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert report["ok"] and set(report["checks"]) == {
        "architecture_config_equal",
        "strict_load",
        "parameters_equal",
        "tower_features_bitwise_equal",
        "flops_per_image_equal",
    }
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "x")]) == 2
    assert "nope" in capsys.readouterr().err
    shutil.rmtree(out)


def test_real_assets_load_offline(clip_tokenizer):
    from reasonclip_llava.assets import SAMPLE_PHOTOS, sample_photos

    photos = sample_photos()
    assert len(photos) == len(SAMPLE_PHOTOS) and all(p.mode == "RGB" and min(p.size) >= 300 for p in photos)
    # ids of the real CLIP BPE vocabulary (openai/clip-vit-base-patch32's tokenizer gives the same)
    ids = clip_tokenizer("a photo of a cat").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407] and len(clip_tokenizer) == 49408


def test_clip_tokenizer_matches_open_clip_simple_tokenizer(clip_tokenizer):
    """The HF tokenizer built from the wheel's BPE file encodes exactly like open_clip's own tokenizer."""
    import importlib.util

    from reasonclip_llava.assets import open_clip_bpe_path

    pytest.importorskip("ftfy")
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer", open_clip_bpe_path().parent / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # loads the file alone: `import open_clip` would need torchvision
    reference = module.SimpleTokenizer(str(open_clip_bpe_path()))
    texts = ["a photo of a cat", "The red circle is LEFT of the blue square, so it's closer!", "two dogs; 3 cats & 1,000 birds"]
    for text in texts:
        ours = clip_tokenizer(text).input_ids
        assert ours == [reference.sot_token_id, *reference.encode(text), reference.eot_token_id], text


def test_naflex_siglip2_is_refused_with_the_reason(tmp_path):
    from transformers import Siglip2Config

    Siglip2Config(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=100),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
    ).save_pretrained(tmp_path / "siglip2")
    with pytest.raises(ValueError, match="siglip2.*pixel_attention_mask"):
        ReasonCLIPForPretraining.from_pretrained(tmp_path / "siglip2")
    with pytest.raises(ValueError, match="siglip2"):
        ReasonCLIPVisionTower(tmp_path / "siglip2", delay_load=True)


def test_cli_names_missing_paths_in_one_line(tmp_path, capsys):
    from reasonclip_llava.cli import main

    for argv in (["verify", str(tmp_path / "no_export"), "--base", str(tmp_path / "no_base")],
                 ["swap", "--llava", str(tmp_path / "no_llava"), "--encoder", str(tmp_path / "x"), "--out", str(tmp_path / "o")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0] and "no_" in err[0], err
