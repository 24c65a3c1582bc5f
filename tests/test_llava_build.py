"""LLaVA-NeXT assembly from (LM, encoder) and vision tower swap: weights, config, processor, round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForCausalLM,
    CLIPModel,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    SiglipModel,
)

from reasonclip_llava.vlm.build import build_llava_next, default_grid_pinpoints, save_llava_next
from reasonclip_llava.vlm.swap import swap_vision_tower
from reasonclip_llava.testing.tiny_lm import build_tiny_lm
from reasonclip_llava.testing.tiny import save_tiny_clip


def photo(height: int = 40, width: int = 70, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("qwen2"), family="qwen2")


@pytest.fixture(scope="module")
def built(qwen_dir, tiny_clip_dir, tmp_path_factory):
    model, processor = build_llava_next(qwen_dir, tiny_clip_dir)
    out = save_llava_next(model, processor, tmp_path_factory.mktemp("llava"))
    return model, processor, out


def test_vision_tower_is_the_encoders(built, tiny_clip_dir):
    model, _, _ = built
    reference = CLIPModel.from_pretrained(tiny_clip_dir).vision_model.state_dict()
    tower = model.model.vision_tower.state_dict()
    assert tower.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(tower[name], tensor), name
    assert model.config.vision_config.model_type == "clip_vision_model"
    assert model.config.vision_config.hidden_size == 32


def test_language_model_weights_and_image_token(built, qwen_dir):
    model, processor, _ = built
    lm = AutoModelForCausalLM.from_pretrained(qwen_dir)
    old_vocab = lm.config.vocab_size
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert model.config.image_token_index == image_id == old_vocab  # appended after the LM's vocabulary
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer) == old_vocab + 1
    for name, tensor in lm.model.state_dict().items():
        ours = model.model.language_model.state_dict()[name]
        if name == "embed_tokens.weight":
            assert torch.equal(ours[:old_vocab], tensor)
            assert torch.allclose(ours[old_vocab], tensor.mean(0))
        else:
            assert torch.equal(ours, tensor), name
    assert torch.equal(model.lm_head.weight[:old_vocab], lm.lm_head.weight)


def test_llava_next_settings(built):
    model, processor, _ = built
    config = model.config
    assert config.vision_feature_layer == -2
    assert config.vision_feature_select_strategy == "default"
    assert config.image_grid_pinpoints == [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    assert default_grid_pinpoints(336) == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    projector = model.model.multi_modal_projector
    assert (projector.linear_1.in_features, projector.linear_1.out_features) == (32, 64)
    assert (projector.linear_2.in_features, projector.linear_2.out_features) == (64, 64)
    assert isinstance(projector.act, torch.nn.GELU) or "gelu" in type(projector.act).__name__.lower()
    assert model.model.image_newline.shape == (64,)
    assert processor.patch_size == 8 and processor.vision_feature_select_strategy == "default"
    assert processor.image_processor.image_grid_pinpoints == config.image_grid_pinpoints
    assert processor.image_processor.crop_size["height"] == 32


def test_image_features_are_layer_minus_2_patches_through_the_projector(built, tiny_clip_dir):
    model, processor, _ = built
    inputs = processor(images=photo(), text="<image>\nWhat is in the image?", return_tensors="pt")
    with torch.no_grad():
        packed = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output[0]
        clip = CLIPModel.from_pretrained(tiny_clip_dir).vision_model
        base_tile = inputs["pixel_values"][0, :1]
        hidden = clip(base_tile, output_hidden_states=True).hidden_states[-2][:, 1:]  # layer -2, CLS dropped
        expected = model.model.multi_modal_projector(hidden)[0]
    assert torch.allclose(packed[: expected.shape[0]], expected, atol=1e-5)
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_index).sum())
    assert n_image_tokens == packed.shape[0]


def test_round_trip_with_plain_transformers_and_generate(built):
    model, _, out = built
    reloaded = LlavaNextForConditionalGeneration.from_pretrained(out)
    processor = LlavaNextProcessor.from_pretrained(out)
    original, again = model.state_dict(), reloaded.state_dict()
    assert original.keys() == again.keys()
    assert all(torch.equal(original[name], again[name]) for name in original)
    inputs = processor(images=photo(), text="<image>\nWhat is in the image?", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, reloaded(**inputs).logits, atol=1e-5)
    generated = reloaded.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_other_lm_families(family, tiny_clip_dir, tmp_path):
    lm_dir = build_tiny_lm(tmp_path / family, family=family)
    model, processor = build_llava_next(lm_dir, tiny_clip_dir)
    inputs = processor(images=photo(32, 90), text="<image>\nDescribe the image.", return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    assert model.config.text_config.model_type == family


def test_siglip_keeps_every_patch(qwen_dir, tiny_siglip_dir):
    model, processor = build_llava_next(qwen_dir, tiny_siglip_dir)
    assert model.config.vision_config.model_type == "siglip_vision_model"
    assert model.config.vision_feature_select_strategy == "full"  # no CLS token to drop
    reference = SiglipModel.from_pretrained(tiny_siglip_dir).vision_model.state_dict()
    assert all(torch.equal(model.model.vision_tower.state_dict()[k], v) for k, v in reference.items())
    inputs = processor(images=photo(), text="<image>\nWhat is in the image?", return_tensors="pt")
    with torch.no_grad():
        packed = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output[0]
        assert torch.isfinite(model(**inputs).logits).all()
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == packed.shape[0]
    with pytest.raises(ValueError, match="no CLS token"):
        build_llava_next(qwen_dir, tiny_siglip_dir, vision_feature_select_strategy="default")


def test_encoder_without_vision_tower_is_refused(qwen_dir):
    with pytest.raises(ValueError, match="vision model_type 'qwen2' is not supported"):
        build_llava_next(qwen_dir, qwen_dir)


# ---- swap -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reasonclip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("reasonclip"), seed=1)


def parameter_table(model):
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def test_swap_replaces_only_the_tower(built, reasonclip_dir, tmp_path):
    _, _, llava_dir = built
    out = swap_vision_tower(llava_dir, reasonclip_dir, tmp_path / "swapped")
    original = LlavaNextForConditionalGeneration.from_pretrained(llava_dir)
    swapped = LlavaNextForConditionalGeneration.from_pretrained(out)
    assert parameter_table(swapped) == parameter_table(original)
    assert sum(p.numel() for p in swapped.parameters()) == sum(p.numel() for p in original.parameters())
    encoder = CLIPModel.from_pretrained(reasonclip_dir).vision_model.state_dict()
    tower = swapped.model.vision_tower.state_dict()
    assert all(torch.equal(tower[name], tensor) for name, tensor in encoder.items())
    assert not torch.equal(tower["embeddings.patch_embedding.weight"],
                           original.model.vision_tower.state_dict()["embeddings.patch_embedding.weight"])
    for name, tensor in original.state_dict().items():
        if "vision_tower" not in name:
            assert torch.equal(swapped.state_dict()[name], tensor), name
    assert swapped.config.reasonclip_encoder == str(reasonclip_dir)
    processor = LlavaNextProcessor.from_pretrained(out)
    inputs = processor(images=photo(), text="<image>\nWhat is in the image?", return_tensors="pt")
    assert swapped.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 2


def test_swap_can_reinitialise_the_projector(built, reasonclip_dir, tmp_path):
    _, _, llava_dir = built
    out = swap_vision_tower(llava_dir, reasonclip_dir, tmp_path / "fresh", reinit_projector=True)
    original = LlavaNextForConditionalGeneration.from_pretrained(llava_dir)
    swapped = LlavaNextForConditionalGeneration.from_pretrained(out)
    assert not torch.equal(swapped.model.multi_modal_projector.linear_1.weight,
                           original.model.multi_modal_projector.linear_1.weight)
    assert torch.equal(swapped.lm_head.weight, original.lm_head.weight)
    assert parameter_table(swapped) == parameter_table(original)


def test_swap_refuses_a_different_architecture(built, tmp_path, tiny_siglip_dir):
    _, _, llava_dir = built
    wider = save_tiny_clip(tmp_path / "wider", hidden_size=48)
    with pytest.raises(ValueError, match="hidden_size 32 vs 48"):
        swap_vision_tower(llava_dir, wider, tmp_path / "out")
    with pytest.raises(ValueError, match="model_type clip_vision_model vs siglip_vision_model"):
        swap_vision_tower(llava_dir, tiny_siglip_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_processor_chat_template_takes_image_parts(built):
    _, _, out = built
    processor = LlavaNextProcessor.from_pretrained(out)
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
    plain = [{"role": "user", "content": "<image>\nWhat is in the image?"}]
    rendered = processor.apply_chat_template(parts, add_generation_prompt=True)
    assert rendered == processor.apply_chat_template(plain, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n") and "<image>\nWhat is in the image?" in rendered


def test_lm_with_tied_embeddings(qwen_dir, tiny_clip_dir, tmp_path):
    tied_dir = tmp_path / "tied"
    lm = AutoModelForCausalLM.from_pretrained(qwen_dir, tie_word_embeddings=True)
    lm.tie_weights()
    lm.save_pretrained(tied_dir)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(qwen_dir).save_pretrained(tied_dir)
    model, processor = build_llava_next(tied_dir, tiny_clip_dir)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    reloaded = LlavaNextForConditionalGeneration.from_pretrained(save_llava_next(model, processor, tmp_path / "llava"))
    assert reloaded.lm_head.weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)
    inputs = processor(images=photo(), text="<image>\nWhat is in the image?", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, reloaded(**inputs).logits, atol=1e-5)


def test_encoder_with_missing_vision_weights_is_refused(qwen_dir, tiny_clip_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_clip_dir, broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors["vision_model.post_layernorm.weight"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing_keys=1 \[.post_layernorm.weight.\]"):
        build_llava_next(qwen_dir, broken)
