"""Drop-in proof: an exported ReasonCLIP checkpoint in original LLaVA and in transformers' LlavaNext."""

import os
from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPVisionModel, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

from reasonclip_llava.encoder import ReasonCLIPForPretraining, ReasonCLIPVisionTower, export_encoder, load_vision_config
from reasonclip_llava.encoder.tower import load_vision_model

llava_builder = pytest.importorskip("llava.model.multimodal_encoder.builder")


@pytest.fixture(scope="module")
def exported(tiny_clip_dir, tmp_path_factory):
    model = ReasonCLIPForPretraining.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        for parameter in model.backbone.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    root = tmp_path_factory.mktemp("export")
    return export_encoder(model.save_pretrained(root / "ckpt", source=tiny_clip_dir), root / "ReasonCLIP-tiny")


@pytest.fixture(autouse=True)
def restore_llava_builder():
    """Each test starts and ends with LLaVA's own builder, whatever ran before in this process."""
    from reasonclip_llava.encoder.llava_compat import unregister_from_llava

    unregister_from_llava()
    yield
    unregister_from_llava()


def _llava_args(tower: str, **extra):
    return SimpleNamespace(mm_vision_tower=tower, vision_tower=tower, mm_vision_select_layer=-2, mm_vision_select_feature="patch", **extra)


def test_original_llava_builder_accepts_local_export_unchanged(exported):
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

    tower = llava_builder.build_vision_tower(_llava_args(str(exported)))
    assert isinstance(tower, CLIPVisionTower)  # LLaVA's own class: a plain CLIP checkpoint on disk
    images = torch.randn(2, 3, 32, 32)
    reference = CLIPVisionModel.from_pretrained(exported)(pixel_values=images, output_hidden_states=True).hidden_states[-2][:, 1:]
    assert torch.equal(tower(images), reference)


def _hub_cache_snapshot(cache_dir, repo_id, source_dir):
    """Lay out `source_dir` as a cached Hub repo, so a Hub id resolves offline (HF_HUB_OFFLINE=1)."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for path in source_dir.iterdir():
        os.symlink(path, snapshot / path.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


def test_registration_makes_llava_accept_reasonclip_hub_ids(exported, tmp_path, monkeypatch):
    from reasonclip_llava.encoder.llava_compat import register_with_llava

    cache = tmp_path / "hub"
    _hub_cache_snapshot(cache, "reasonclip-org/ReasonCLIP-tiny", exported)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("transformers.utils.hub.HF_HUB_CACHE", str(cache), raising=False)
    monkeypatch.setattr("transformers.utils.hub.TRANSFORMERS_CACHE", str(cache), raising=False)
    args = _llava_args("reasonclip-org/ReasonCLIP-tiny")
    with pytest.raises(ValueError, match="Unknown vision tower"):
        llava_builder.build_vision_tower(args)  # LLaVA's rule alone rejects the Hub id
    register_with_llava(aliases={"reasonclip-tiny-alias": exported})
    register_with_llava()  # idempotent
    tower = llava_builder.build_vision_tower(args)
    assert isinstance(tower, ReasonCLIPVisionTower) and tower.num_patches == 16
    alias_tower = llava_builder.build_vision_tower(_llava_args("reasonclip-tiny-alias"), delay_load=True)
    assert isinstance(alias_tower, ReasonCLIPVisionTower) and not alias_tower.is_loaded
    images = torch.randn(1, 3, 32, 32)
    assert torch.equal(tower(images), load_vision_model(exported)(pixel_values=images, output_hidden_states=True).hidden_states[-2][:, 1:])
    # other CLIP paths still go to LLaVA's own builder
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

    os.symlink(exported, tmp_path / "plain_clip")
    assert isinstance(llava_builder.build_vision_tower(_llava_args(str(tmp_path / "plain_clip"))), CLIPVisionTower)
    from reasonclip_llava.encoder.llava_compat import unregister_from_llava

    unregister_from_llava()
    with pytest.raises(ValueError, match="Unknown vision tower"):
        llava_builder.build_vision_tower(args)  # unregistered: LLaVA's own rule again


def test_original_llava_model_runs_with_exported_tower(exported):
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.model import LlavaLlamaForCausalLM
    from llava.model.language_model.llava_llama import LlavaConfig

    from reasonclip_llava.encoder.llava_compat import register_with_llava

    register_with_llava()
    config = LlavaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    model = LlavaLlamaForCausalLM(config)
    model_args = _llava_args(str(exported), pretrain_mm_mlp_adapter=None, mm_patch_merge_type="flat", mm_projector_type="mlp2x_gelu")
    model.get_model().initialize_vision_modules(model_args)
    assert model.config.mm_hidden_size == 32
    images = torch.randn(1, 3, 32, 32)
    input_ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 7, 9]])
    output = model(input_ids=input_ids, images=images, labels=torch.tensor([[-100, -100, -100, 7, 9]]))
    assert output.logits.shape == (1, 4 + 16, 64)  # 4 text tokens + 16 patch features
    assert torch.isfinite(output.loss)


def test_export_plugs_into_transformers_llava_next(exported):
    vision_config = load_vision_config(exported)
    assert vision_config.model_type == "clip_vision_model"
    text_config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    config = LlavaNextConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=63,
        image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    vision = load_vision_model(exported)
    missing, unexpected = model.model.vision_tower.load_state_dict(vision.state_dict(), strict=True)
    assert not missing and not unexpected
    pixel_values = torch.randn(1, 5, 3, 32, 32)  # base image + a 2x2 anyres grid
    image_sizes = torch.tensor([[64, 64]])
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=pixel_values, image_sizes=image_sizes, return_dict=True)
        tiles = model.model.vision_tower(pixel_values[0], output_hidden_states=True).hidden_states[-2][:, 1:]
        reference = vision(pixel_values=pixel_values[0], output_hidden_states=True).hidden_states[-2][:, 1:]
    assert torch.equal(tiles, reference)
    n_features = features.pooler_output[0].shape[0]
    input_ids = torch.tensor([[1, 2] + [63] * n_features + [3]])
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixel_values, image_sizes=image_sizes).logits
    assert logits.shape == (1, n_features + 3, 64) and torch.isfinite(logits).all()


# ---- SigLIP exports: the installed llava-torch, and LLaVA-NeXT's builder rule ------------------------


def test_local_siglip_export_builds_our_tower_in_installed_llava(tiny_siglip_dir, caplog):
    from transformers import SiglipVisionModel

    from reasonclip_llava.encoder.llava_compat import llava_siglip_tower, register_with_llava

    assert llava_siglip_tower() is None  # llava-torch 1.2.2 (original LLaVA) ships a CLIP tower only
    register_with_llava()
    with caplog.at_level("WARNING", logger="reasonclip_llava.encoder.llava_compat"):
        tower = llava_builder.build_vision_tower(_llava_args(str(tiny_siglip_dir)))
    assert isinstance(tower, ReasonCLIPVisionTower) and not caplog.records
    images = torch.randn(1, 3, 32, 32)
    reference = SiglipVisionModel.from_pretrained(tiny_siglip_dir)(pixel_values=images, output_hidden_states=True)
    assert torch.equal(tower(images), reference.hidden_states[-2])  # no CLS: every patch kept


class _LlavaNextSiglipConfig:
    """LLaVA-NeXT's SigLipVisionConfig defaults (siglip_encoder.py): So400M/14 at 384 px."""

    def __init__(self, hidden_size=1152, image_size=384, patch_size=14, num_hidden_layers=27):
        self.hidden_size, self.image_size, self.patch_size = hidden_size, image_size, patch_size
        self.num_hidden_layers = num_hidden_layers


class _LlavaNextSiglipTower(torch.nn.Module):
    """LLaVA-NeXT's SigLipVisionTower constructor: (vision_tower, vision_tower_cfg, delay_load=False)."""

    def __init__(self, vision_tower, vision_tower_cfg, delay_load=False):
        super().__init__()
        self.vision_tower_name, self.cfg, self.delay_load = vision_tower, vision_tower_cfg, delay_load


@pytest.fixture
def llava_next_siglip(monkeypatch):
    """The installed `llava` as LLaVA-NeXT's: a multimodal_encoder.siglip_encoder module with its tower class."""
    import sys
    import types

    module = types.ModuleType("llava.model.multimodal_encoder.siglip_encoder")
    module.SigLipVisionConfig, module.SigLipVisionTower = _LlavaNextSiglipConfig, _LlavaNextSiglipTower
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def test_llava_next_siglip_rule(llava_next_siglip, tiny_siglip_dir, exported, tmp_path, caplog):
    from transformers import SiglipVisionConfig

    from reasonclip_llava.encoder.llava_compat import register_with_llava, tower_route

    register_with_llava()
    # a So400M/14-384 SigLIP export (config only: the route reads no weights) -> LLaVA-NeXT's own class
    so400m = tmp_path / "ReasonSigLIP-So14-384"
    SiglipVisionConfig(hidden_size=1152, image_size=384, patch_size=14, num_hidden_layers=27).save_pretrained(so400m)
    assert tower_route(str(so400m)) == "llava_siglip"
    tower = llava_builder.build_vision_tower(_llava_args(str(so400m)), delay_load=True)
    assert isinstance(tower, _LlavaNextSiglipTower) and tower.vision_tower_name == str(so400m) and tower.delay_load

    # a SigLIP that class cannot take -> our tower, and one line saying why
    with caplog.at_level("WARNING", logger="reasonclip_llava.encoder.llava_compat"):
        tower = llava_builder.build_vision_tower(_llava_args(str(tiny_siglip_dir)))
    assert isinstance(tower, ReasonCLIPVisionTower) and tower.num_patches == 16
    [record] = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "hard-wired to So400M/14-384 (729 tokens)" in message
    assert "hidden_size 32 vs 1152" in message and "image_size 32 vs 384" in message

    # a local CLIP export still goes to LLaVA's own CLIP tower
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

    os.symlink(exported, tmp_path / "plain_clip")
    assert tower_route(str(tmp_path / "plain_clip")) is None
    assert isinstance(llava_builder.build_vision_tower(_llava_args(str(tmp_path / "plain_clip"))), CLIPVisionTower)
