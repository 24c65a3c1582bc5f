"""open_clip -> Hugging Face CLIP conversion, checked against open_clip's own forward.

The reference is open_clip's unmodified model code (open_clip/model.py + transformer.py from the
installed wheel), loaded by `open_clip_reference` without `import open_clip`: that import pulls
torchvision, whose PyPI wheels do not run with the CPU torch build (see that module for the one stub
and why it is safe). Tolerance: fp32 on CPU, relative Frobenius error <= 1e-5 for image embeddings,
text embeddings and logits (measured 1e-7 to 1e-6: the only difference is nn.MultiheadAttention's fused
in-projection vs three Linear layers).
"""

from __future__ import annotations

import itertools
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from open_clip_reference import OPENAI_MEAN, OPENAI_STD, build_open_clip, model_config, open_clip_eval_transform, shrink
from pretrain_helpers import make_workspace, recipe, single_thread, stage_args
from reasonclip_llava.cli import main
from reasonclip_llava.encoder import export_encoder, verify_export
from reasonclip_llava.encoder.convert_open_clip import SUPPORTED_MODELS, convert_open_clip, convert_state_dict, hf_clip_config

TOLERANCE = 1e-5
CAPTIONS = ["a photo of a cat", "the red circle is left of the blue square", "two dogs; 3 cats & 1,000 birds"]
# CLIPModel parameter counts of OpenAI's released checkpoints (openai/clip-vit-base-patch32, -base-patch16,
# -large-patch14, -large-patch14-336): the same architectures as open_clip's names.
PUBLISHED_PARAMETERS = {"ViT-B-32": 151_277_313, "ViT-B-16": 149_620_737, "ViT-L-14": 427_616_513, "ViT-L-14-336": 427_944_193}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).norm() / reference.norm())


def write_checkpoint(model: torch.nn.Module, path, layout: str):
    """The layouts open_clip checkpoints come in: a training checkpoint (open_clip's train loop with DDP),
    a plain state dict, or safetensors."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if layout == "training":
        torch.save({"epoch": 5, "name": "negclip-like", "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif layout == "plain":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    return path


def tiny_family(name: str, tmp_path, image_size: int | None = None):
    """(open_clip model, its checkpoint, its shrunk config as a model config JSON) for one family."""
    config = shrink(model_config(name), image_size=image_size)
    reference = build_open_clip(config)
    config_path = tmp_path / f"{name}.json"
    config_path.write_text(json.dumps(config))
    return reference, config_path


@torch.no_grad()
def embeddings(reference, hf, tokenizer, image_size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(3, 3, image_size, image_size, generator=generator)
    tokens = tokenizer(CAPTIONS, padding="max_length", max_length=77, return_tensors="pt")
    ours = dict(
        image=hf.get_image_features(pixel_values=pixels).pooler_output,
        text=hf.get_text_features(**tokens).pooler_output,
        logits=hf(pixel_values=pixels, **tokens).logits_per_image,
    )
    theirs = dict(image=reference.encode_image(pixels), text=reference.encode_text(tokens["input_ids"]), logits=reference.get_logits(pixels, tokens["input_ids"])[0])
    return ours, theirs


# every layout is exercised by several families
LAYOUTS = dict(zip(SUPPORTED_MODELS, itertools.cycle([("training", "pt"), ("plain", "bin"), ("safetensors", "safetensors")])))


@pytest.mark.parametrize("name", SUPPORTED_MODELS)
def test_converted_clip_equals_open_clip_forward(name, tmp_path):
    reference, config_path = tiny_family(name, tmp_path)
    layout, suffix = LAYOUTS[name]
    checkpoint = write_checkpoint(reference, tmp_path / f"weights.{suffix}", layout)
    out = convert_open_clip(checkpoint, config_path, tmp_path / "hf")

    hf = CLIPModel.from_pretrained(out).eval()
    expected_act = "quick_gelu" if name.endswith("-quickgelu") else "gelu"
    assert hf.config.vision_config.hidden_act == hf.config.text_config.hidden_act == expected_act
    image_size = reference.visual.image_size[0]
    assert hf.config.vision_config.image_size == image_size and hf.config.vision_config.patch_size == reference.visual.patch_size[0]
    ours, theirs = embeddings(reference, hf, AutoTokenizer.from_pretrained(out), image_size)
    for key in ("image", "text", "logits"):
        assert relative_error(ours[key], theirs[key]) <= TOLERANCE, (key, relative_error(ours[key], theirs[key]))


def test_quickgelu_trap_is_detectable(tmp_path):
    """A QuickGELU checkpoint converted under the GELU name loads cleanly but embeds differently."""
    reference, quick_config = tiny_family("ViT-B-32-quickgelu", tmp_path)
    checkpoint = write_checkpoint(reference, tmp_path / "quick.pt", "training")
    gelu_config = tmp_path / "ViT-B-32.json"
    gelu_config.write_text(json.dumps(shrink(model_config("ViT-B-32"))))
    right = CLIPModel.from_pretrained(convert_open_clip(checkpoint, quick_config, tmp_path / "right")).eval()
    wrong = CLIPModel.from_pretrained(convert_open_clip(checkpoint, gelu_config, tmp_path / "wrong")).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "right")
    (ours, theirs), (trap, _) = embeddings(reference, right, tokenizer, 224), embeddings(reference, wrong, tokenizer, 224)
    assert (right.config.vision_config.hidden_act, wrong.config.vision_config.hidden_act) == ("quick_gelu", "gelu")
    for key in ("image", "text"):
        assert relative_error(ours[key], theirs[key]) <= TOLERANCE
        assert relative_error(trap[key], theirs[key]) > 1e-3, key  # 100x the parity tolerance


@pytest.mark.parametrize("name", SUPPORTED_MODELS)
def test_real_size_matches_open_clip_on_meta_device(name):
    config = model_config(name)
    reference = build_open_clip(config, device="meta")
    with torch.device("meta"):
        hf = CLIPModel(hf_clip_config(config))
    count = sum(p.numel() for p in hf.parameters())
    assert count == sum(p.numel() for p in reference.parameters()) == PUBLISHED_PARAMETERS[name.removesuffix("-quickgelu")]
    converted = convert_state_dict(reference.state_dict(), config)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    assert hf.config.vision_config.hidden_act == ("quick_gelu" if name.endswith("-quickgelu") else "gelu")


@pytest.mark.parametrize("preprocess", [{}, {"resize_mode": "squash", "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}])
def test_image_preprocessing_is_open_clips(preprocess, tmp_path):
    reference, config_path = tiny_family("ViT-L-14-336", tmp_path)
    config = json.loads(config_path.read_text())
    if preprocess:  # the Hub layout: open_clip_config.json nests model_cfg beside preprocess_cfg
        config_path = tmp_path / "open_clip_config.json"
        config_path.write_text(json.dumps({"model_cfg": config, "preprocess_cfg": preprocess}))
    else:
        config_path.write_text(json.dumps({**config, "preprocess_cfg": preprocess}))
    out = convert_open_clip(write_checkpoint(reference, tmp_path / "w.pt", "plain"), config_path, tmp_path / "hf")
    saved = json.loads((out / "preprocessor_config.json").read_text())
    mean, std = preprocess.get("mean", OPENAI_MEAN), preprocess.get("std", OPENAI_STD)
    resample = {"bicubic": 3, "bilinear": 2}[preprocess.get("interpolation", "bicubic")]
    assert saved["image_mean"] == list(mean) and saved["image_std"] == list(std) and saved["resample"] == resample
    processor = AutoImageProcessor.from_pretrained(out)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 450, 3), dtype=np.uint8))
    ours = processor(images=photo, return_tensors="pt")["pixel_values"][0].numpy()
    expected = open_clip_eval_transform(photo, 336, mean, std, preprocess.get("resize_mode", "shortest"), resample)
    assert ours.shape == expected.shape == (3, 336, 336)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_converted_tokenizer_is_the_clip_bpe(tmp_path):
    reference, config_path = tiny_family("ViT-B-32", tmp_path)
    out = convert_open_clip(write_checkpoint(reference, tmp_path / "w.pt", "plain"), config_path, tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(out)
    # openai/clip-vit-base-patch32's tokenizer gives the same ids
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.model_max_length == 77 and len(tokenizer) == 49408
    provenance = json.loads((out / "config.json").read_text())
    assert provenance["reasonclip_open_clip_model"] == "ViT-B-32" and provenance["reasonclip_source_format"] == "open_clip"
    assert len(provenance["reasonclip_open_clip_sha256"]) == 64 and provenance["reasonclip_base_model"].endswith("w.pt")


def _custom(tmp_path, tower: str, **options):
    config = shrink(model_config("ViT-B-32"))
    config[tower].update(options)
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(("model", "reason"), [
    ("RN50", "ResNet"),
    ("coca_ViT-B-32", "CoCa"),
    ("ViT-B-16-SigLIP", "timm model"),
    ("xlm-roberta-base-ViT-B-32", "Hugging Face model 'xlm-roberta-base'"),
    ("ViT-H-14-CLIPA", "no_ln_pre"),
    ("ViT-M-16-alt", "ls_init_value"),
    ("attentional_pool", "attentional_pool"),
    ("final_ln_after_pool", "final_ln_after_pool"),
])
def test_unmappable_architectures_are_refused_in_one_line(model, reason, tmp_path, capsys):
    if model in ("attentional_pool", "final_ln_after_pool"):
        model = str(_custom(tmp_path, "vision_cfg", **{model: True}))
    checkpoint = tmp_path / "never_read.pt"
    checkpoint.write_bytes(b"")
    code = main(["convert", "open_clip", str(checkpoint), "--model", model, "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and reason in error and "cannot be converted" in error
    assert not (tmp_path / "out").exists()


def test_bad_checkpoints_name_the_problem_and_keep_existing_output(tmp_path, capsys):
    reference, config_path = tiny_family("ViT-B-32", tmp_path)
    b16, b16_config = tiny_family("ViT-B-16", tmp_path)
    good = write_checkpoint(reference, tmp_path / "good.pt", "training")

    def convert(checkpoint, model=config_path, out=tmp_path / "out", *extra):
        code = main(["convert", "open_clip", str(checkpoint), "--model", str(model), "--out", str(out), *extra])
        return code, capsys.readouterr()

    code, captured = convert(write_checkpoint(b16, tmp_path / "b16.pt", "plain"))  # a B/16 checkpoint named as B/32
    assert code == 2 and "b16.pt" in captured.err and "size mismatch" in captured.err and len(captured.err.strip().splitlines()) == 1
    extra = {**reference.state_dict(), "visual.extra_head.weight": torch.zeros(2)}
    torch.save(extra, tmp_path / "extra.pt")
    code, captured = convert(tmp_path / "extra.pt")
    assert code == 2 and "visual.extra_head.weight" in captured.err
    (tmp_path / "junk.pt").write_bytes(pickle.dumps(object()))
    code, captured = convert(tmp_path / "junk.pt")
    assert code == 2 and "junk.pt" in captured.err and "not a readable open_clip state dict" in captured.err
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "openai_jit.pt"))  # OpenAI's original release format
    code, captured = convert(tmp_path / "openai_jit.pt")
    assert code == 2 and "torch.jit.load(file).state_dict()" in captured.err
    code, captured = convert(tmp_path / "absent.pt")
    assert code == 2 and "absent.pt" in captured.err
    code, captured = convert(good, "ViT-Q-99")
    assert code == 2 and "ViT-Q-99" in captured.err
    assert not (tmp_path / "out").exists()  # nothing written by a failed conversion

    assert convert(good)[0] == 0
    before = (tmp_path / "out" / "model.safetensors").read_bytes()
    code, captured = convert(good)
    assert code == 2 and "not empty" in captured.err and (tmp_path / "out" / "model.safetensors").read_bytes() == before
    assert convert(good, config_path, tmp_path / "out", "--overwrite")[0] == 0


@pytest.mark.slow
def test_converted_open_clip_trains_with_read_exports_and_verifies(tmp_path, capsys):
    """Done-when of issue 16 at tiny size: a NegCLIP-style training checkpoint (QuickGELU ViT-B/32) converts,
    passes verify against itself, is the start point of a READ run, and the run exports and verifies."""
    reference, config_path = tiny_family("ViT-B-32-quickgelu", tmp_path, image_size=64)
    checkpoint = write_checkpoint(reference, tmp_path / "negclip.pth", "training")
    converted = tmp_path / "negclip-hf"
    assert main(["convert", "open_clip", str(checkpoint), "--model", str(config_path), "--out", str(converted)]) == 0
    assert verify_export(converted, converted)["ok"]

    workspace = make_workspace(tmp_path / "ws")
    with single_thread():
        code = main(["pretrain", str(recipe("read")), *stage_args(workspace, "read", tmp_path / "run", "--schedule.max_steps=2", "--runtime.save_every=2", model=converted)])
    assert code == 0
    final = tmp_path / "run" / "final"
    exported = export_encoder(final, tmp_path / "export")
    report = verify_export(exported, converted)
    assert report["ok"], report["failed"]
    config = json.loads((exported / "config.json").read_text())
    assert config["vision_config"]["hidden_act"] == "quick_gelu" and config["reasonclip_stage"] == "read"
    assert config["reasonclip_open_clip_model"] == "ViT-B-32-quickgelu"
    trained = CLIPModel.from_pretrained(exported).eval()
    assert not torch.equal(trained.visual_projection.weight, CLIPModel.from_pretrained(converted).visual_projection.weight)
