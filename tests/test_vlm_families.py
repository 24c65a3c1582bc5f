"""Every registered VLM family takes a CLIP / SigLIP tower 1:1 (vlm/families.py, vlm/swap.py).

Tiny random VLMs of the 14 transformers classes (testing/tiny_vlm.py), an encoder swapped in; the tensor the
projector receives is compared bitwise with a plain CLIPVisionModel / SiglipVisionModel run on the same
pixels at the rule restated here from docs (VLM.md, read in each class's get_image_features).
"""

import shutil

import pytest
import torch
import transformers
from transformers import CLIPModel, CLIPVisionModel, SiglipModel, SiglipVisionModel

from reasonclip_llava.cli import main
from reasonclip_llava.testing.tiny_vlm import generate_inputs, save_tiny_vlm, tiny_vlm_config
from reasonclip_llava.vlm.families import FAMILIES, family_of, get_family, map_encoder_to_tower
from reasonclip_llava.vlm.swap import swap_vision_tower
from reasonclip_llava.vlm.tower_check import verify_vlm_tower

# class, encoder, projector input restated from VLM.md for the tiny configs (vision_feature_layer -2 /
# 'default' for the CLIP LLaVAs, -1 / 'full' for OneVision and Aya, ViP-LLaVA's layers [-2, -1, 1]).
EXPECTED = {
    "llava": ("LlavaForConditionalGeneration", "clip", lambda o: o.hidden_states[-2][:, 1:]),
    "llava_next": ("LlavaNextForConditionalGeneration", "clip", lambda o: o.hidden_states[-2][:, 1:]),
    "llava_next_video": ("LlavaNextVideoForConditionalGeneration", "clip", lambda o: o.hidden_states[-2][:, 1:]),
    "llava_onevision": ("LlavaOnevisionForConditionalGeneration", "siglip", lambda o: o.hidden_states[-1]),
    "vipllava": ("VipLlavaForConditionalGeneration", "clip",
                 lambda o: torch.cat([o.hidden_states[i][:, 1:] for i in (-2, -1, 1)], dim=-1)),
    "video_llava": ("VideoLlavaForConditionalGeneration", "clip", lambda o: o.hidden_states[-2][:, 1:]),
    "paligemma": ("PaliGemmaForConditionalGeneration", "siglip", lambda o: o.last_hidden_state),
    "gemma3": ("Gemma3ForConditionalGeneration", "siglip", lambda o: o.last_hidden_state),
    "aya_vision": ("AyaVisionForConditionalGeneration", "siglip", lambda o: o.hidden_states[-1]),
    "cohere2_vision": ("Cohere2VisionForConditionalGeneration", "siglip", lambda o: o.last_hidden_state),
    "deepseek_vl": ("DeepseekVLForConditionalGeneration", "siglip", lambda o: o.last_hidden_state),
    "idefics2": ("Idefics2ForConditionalGeneration", "siglip", lambda o: o.last_hidden_state),
    "idefics3": ("Idefics3ForConditionalGeneration", "siglip", lambda o: o.last_hidden_state),
    "smolvlm": ("SmolVLMForConditionalGeneration", "siglip", lambda o: o.last_hidden_state),
}
TOWERS = {"video_llava": ("image_tower", "video_tower"), "deepseek_vl": ("vision_model",), "idefics2": ("vision_model",),
          "idefics3": ("vision_model",), "smolvlm": ("vision_model",)}
PROJECTORS = {"deepseek_vl": "aligner", "idefics2": "connector", "idefics3": "connector", "smolvlm": "connector"}


def test_the_registry_covers_the_14_classes():
    assert {name: family.class_name for name, family in FAMILIES.items()} == {k: v[0] for k, v in EXPECTED.items()}
    assert get_family("video_llava").tower_paths == ("model.image_tower", "model.video_tower")


@pytest.fixture(scope="module")
def swapped(tmp_path_factory, tiny_clip_dir, tiny_siglip_dir):
    """{family: (original dir, swapped dir, encoder dir)}, built once."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for name, (_, kind, _) in EXPECTED.items():
        encoder = tiny_clip_dir if kind == "clip" else tiny_siglip_dir
        original = save_tiny_vlm(root / name, name, seed=3)
        out[name] = (original, swap_vision_tower(original, encoder, root / f"{name}-swapped"), encoder)
    return out


def encoder_vision_state(encoder, kind):
    model = (CLIPModel if kind == "clip" else SiglipModel).from_pretrained(encoder)
    return model.vision_model.state_dict()


def projector_input(model, name, call):
    seen = []
    projector = getattr(model.model, PROJECTORS.get(name, "multi_modal_projector"))
    hook = projector.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            call()
    finally:
        hook.remove()
    return seen[0]


def probe_calls(model, name):
    """(call, pixels the tower sees) per tower, built here as each class's get_image_features takes them."""
    torch.manual_seed(11)
    inner = model.model
    if name in ("llava_next", "llava_next_video", "llava_onevision"):
        # a 32x32 image with pinpoint [32, 32]: base tile + one grid tile
        pixels = torch.randn(1, 2, 3, 32, 32)
        return [(lambda: inner.get_image_features(pixel_values=pixels, image_sizes=torch.tensor([[32, 32]])), pixels[0])]
    if name in ("idefics2", "idefics3", "smolvlm"):
        pixels = torch.randn(1, 1, 3, 32, 32)
        mask = torch.ones(1, 1, 32, 32, dtype=torch.bool)
        return [(lambda: inner.get_image_features(pixel_values=pixels, pixel_attention_mask=mask), pixels[0])]
    pixels = torch.randn(2, 3, 32, 32)
    calls = [(lambda: inner.get_image_features(pixel_values=pixels), pixels)]
    if name == "video_llava":
        video = torch.randn(1, 8, 3, 32, 32)
        calls.append((lambda: inner.get_video_features(pixel_values_videos=video), video[0]))
    return calls


@pytest.mark.parametrize("name", list(EXPECTED))
def test_swap_is_bitwise_at_the_projector_input(name, swapped):
    class_name, kind, rule = EXPECTED[name]
    original_dir, swapped_dir, encoder = swapped[name]
    model_class = getattr(transformers, class_name)
    model = model_class.from_pretrained(swapped_dir).eval()
    original = model_class.from_pretrained(original_dir)

    # the tower(s) hold the encoder's vision_model.* (Idefics towers: without head.*); nothing else moved
    reference = encoder_vision_state(encoder, kind)
    if name in ("idefics2", "idefics3", "smolvlm"):
        reference = {k: v for k, v in reference.items() if not k.startswith("head.")}
    for tower in TOWERS.get(name, ("vision_tower",)):
        state = getattr(model.model, tower).state_dict()
        assert state.keys() == reference.keys() and all(torch.equal(state[k], v) for k, v in reference.items())
    tower_names = tuple(f"model.{t}." for t in TOWERS.get(name, ("vision_tower",)))
    for key, tensor in original.state_dict().items():
        if not key.startswith(tower_names):
            assert torch.equal(model.state_dict()[key], tensor), key

    # the projector's input equals the standalone encoder at the family's rule, bitwise, for every tower
    standalone = (CLIPVisionModel if kind == "clip" else SiglipVisionModel).from_pretrained(encoder).eval()
    for index, (call, pixels) in enumerate(probe_calls(model, name)):
        with torch.no_grad():
            outputs = standalone(pixels, output_hidden_states=True)
        expected = outputs.hidden_states[-2] if (name, index) == ("video_llava", 1) else rule(outputs)  # video: all tokens
        assert torch.equal(projector_input(model, name, call), expected), (name, index)

    report = verify_vlm_tower(swapped_dir, encoder)
    assert report["verdict"] == "equal" and report["ok"], report
    assert [t["path"] for t in report["towers"]] == [f"model.{t}" for t in TOWERS.get(name, ("vision_tower",))]

    # generate runs (the tower checks above already read the saved files back: save -> reload is bitwise)
    inputs = generate_inputs(model)
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2


def test_swap_takes_the_neutral_flag_and_refuses_other_vlms(tmp_path, tiny_clip_dir, capsys):
    vlm = save_tiny_vlm(tmp_path / "llava", "llava")
    assert main(["swap", "--vlm", str(vlm), "--encoder", str(tiny_clip_dir), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    cases = {"Qwen2VLConfig": "qwen2_vl_vision", "Mistral3Config": "pixtral", "InternVLConfig": "internvl_vision",
             "JanusConfig": "janus_vision_model", "Lfm2VlConfig": "siglip2_vision_model"}
    for config_name, tower_type in cases.items():
        directory = tmp_path / config_name
        getattr(transformers, config_name)().save_pretrained(directory)
        for command in (["swap", "--llava", str(directory), "--encoder", str(tiny_clip_dir), "--out", str(tmp_path / "x")],
                        ["verify", str(directory), "--encoder", str(tiny_clip_dir)]):
            assert main(command) == 2, command
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and repr(tower_type) in lines[0] and "own ViT, not a CLIP/SigLIP tower" in lines[0]
    # a LLaVA config around Pixtral's tower (how transformers converts Pixtral-12B) is refused by its tower
    pixtral = tmp_path / "llava_pixtral"
    transformers.LlavaConfig(vision_config=transformers.PixtralVisionConfig()).save_pretrained(pixtral)
    with pytest.raises(ValueError, match="model_type 'llava' with tower 'pixtral'"):
        family_of(pixtral)
    assert not (tmp_path / "x").exists()


def test_a_shorter_tower_read_at_minus_one_is_the_encoders_minus_two(tmp_path, tiny_siglip_dir):
    # the llava-hf OneVision conversion: so400m minus its last layer, no head, read at hidden_states[-1]
    original = save_tiny_vlm(tmp_path / "ov", "llava_onevision", num_hidden_layers=2, vision_use_head=False)
    out = swap_vision_tower(original, tiny_siglip_dir, tmp_path / "ov-swapped")
    model = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(out).eval()
    assert len(model.model.vision_tower.encoder.layers) == 2
    encoder = SiglipVisionModel.from_pretrained(tiny_siglip_dir).eval()
    assert encoder.config.num_hidden_layers == 3
    pixels = torch.randn(1, 2, 3, 32, 32)
    captured = projector_input(model, "llava_onevision", lambda: model.model.get_image_features(
        pixel_values=pixels, image_sizes=torch.tensor([[32, 32]])))
    with torch.no_grad():
        assert torch.equal(captured, encoder(pixels[0], output_hidden_states=True).hidden_states[-2])
    report = verify_vlm_tower(out, tiny_siglip_dir)
    assert report["verdict"] == "equal" and report["towers"][0]["encoder_feature"] == "hidden_states[-2]"
    assert report["encoder_layers"] == 3 and report["tower_layers"] == 2
    assert {n.split(".")[0] for n in report["dropped_from_encoder"]} == {"head", "encoder"}
    assert all(n.startswith(("head.", "encoder.layers.2.")) for n in report["dropped_from_encoder"])


def test_a_tower_the_encoder_cannot_fill_is_refused(tmp_path, tiny_clip_dir, tiny_siglip_dir):
    paligemma = get_family("paligemma")
    # PaliGemma reads last_hidden_state: a shorter tower would read a layer the encoder does not output
    with pytest.raises(ValueError, match="reads last_hidden_state"):
        map_encoder_to_tower(tiny_siglip_dir, paligemma, tiny_vlm_config("paligemma", num_hidden_layers=2))
    # a deeper tower than the encoder: layer 3 has no encoder weights
    with pytest.raises(ValueError, match=r"tower layers 3\.\.3 have no encoder weights"):
        map_encoder_to_tower(tiny_clip_dir, get_family("llava"), tiny_vlm_config("llava", num_hidden_layers=4))
    # a 32 px encoder into a 64 px tower: no interpolation
    with pytest.raises(ValueError, match="image_size 64 vs 32"):
        map_encoder_to_tower(tiny_siglip_dir, paligemma, tiny_vlm_config("paligemma", image_size=64))
    with pytest.raises(ValueError, match="model_type siglip_vision_model vs clip_vision_model"):
        map_encoder_to_tower(tiny_clip_dir, paligemma, tiny_vlm_config("paligemma"))
    # via swap: one line, nothing written
    vlm = save_tiny_vlm(tmp_path / "pg", "paligemma", patch_size=4)
    assert main(["swap", "--llava", str(vlm), "--encoder", str(tiny_siglip_dir), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
    shutil.rmtree(vlm)


def test_the_eval_loader_goes_through_the_registry(tmp_path):
    from reasonclip_llava.evaluation.generate import load_llava_next

    vlm = save_tiny_vlm(tmp_path / "smol", "smolvlm")
    with pytest.raises(FileNotFoundError, match="no processor files"):  # loaded strictly, then asks for its processor
        load_llava_next(vlm)
    qwen = tmp_path / "qwen"
    transformers.Qwen2VLConfig().save_pretrained(qwen)
    with pytest.raises(ValueError, match="'qwen2_vl_vision'"):
        load_llava_next(qwen)


def test_swap_carries_the_encoders_normalisation_into_the_processor(tmp_path):
    import json

    from reasonclip_llava.testing.tiny import save_tiny_clip
    from reasonclip_llava.testing.tiny_llava import save_tiny_llava_next

    vlm = save_tiny_llava_next(tmp_path / "next")
    encoder = save_tiny_clip(tmp_path / "enc", num_hidden_layers=2)
    settings = json.loads((encoder / "preprocessor_config.json").read_text())
    settings.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    (encoder / "preprocessor_config.json").write_text(json.dumps(settings))
    before = transformers.LlavaNextProcessor.from_pretrained(vlm).image_processor
    assert list(before.image_mean) != [0.5, 0.5, 0.5]
    out = swap_vision_tower(vlm, encoder, tmp_path / "out")
    after = transformers.LlavaNextProcessor.from_pretrained(out).image_processor
    assert list(after.image_mean) == [0.5, 0.5, 0.5] and list(after.image_std) == [0.25, 0.25, 0.25]
    assert after.image_grid_pinpoints == before.image_grid_pinpoints
