"""What a converted open_clip model is fed, checked against open_clip itself (issue 25).

References, none of them our code:
- pixels: open_clip's eval transform (open_clip/transform.py: Resize(size) -> CenterCrop(size) ->
  convert("RGB") -> ToTensor -> Normalize) through open_clip itself when torchvision imports, else restated
  here from torchvision's documented rules (`open_clip_eval_transform`);
- tokens: open_clip's own SimpleTokenizer (open_clip/tokenizer.py from the wheel, unmodified);
- activation: open_clip's pretrained table (open_clip/pretrained.py from the wheel);
- features: open_clip's model classes (open_clip/model.py), as in test_convert_open_clip.py.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, CLIPImageProcessorPil, CLIPModel
from transformers.image_utils import SizeDict

from open_clip_reference import (
    OPENAI_STD, TORCHVISION, build_open_clip, model_config, open_clip_eval_transform, open_clip_model_module, open_clip_tokenizer, shrink,
)
from pretrain_helpers import make_workspace, recipe, single_thread, stage_args
from reasonclip_llava.assets import clip_tokenizer, open_clip_module, sample_photos
from reasonclip_llava.cli import main
from reasonclip_llava.data import ReasonCollator
from reasonclip_llava.encoder.convert_open_clip import (
    convert_open_clip, convert_state_dict, hf_clip_config, hf_image_processor, load_open_clip_state_dict, resolve_open_clip_model,
)
from reasonclip_llava.encoder.open_clip_image_processor import OpenCLIPImageProcessorPil, load_image_processor
from reasonclip_llava.encoder.text import TextRule, tokenize
from reasonclip_llava.evaluation.encoder.embed import EncoderEmbedder

GREY_LEVEL = 1 / 255 / min(OPENAI_STD)  # one grey level, in normalized pixel units
# (width, height): the three photos whose (resized side - 224) is 3 mod 4 (torchvision rounds the
# offset up, transformers floors it), differences 0, 1, 2, 3 mod 4 on either axis, a square and an upscale.
SIZES = [(640, 427), (384, 303), (333, 217), (450, 300), (300, 455), (226, 300), (227, 227), (224, 224), (100, 50)]
converter = importlib.import_module("reasonclip_llava.encoder.convert_open_clip")  # the module (the package exports the function)

STRINGS = [  # 30 varied strings: entities, curly quotes, mojibake, emoji, CJK, over-long, literal special tokens
    "a photo of a cat",
    "Tom &amp; Jerry",
    "Fish &amp;amp; chips &lt;3 &#x27;quoted&#x27;",
    "\u201ccurly\u201d quotes and \u2018single\u2019 ones",
    "caf\u00c3\u00a9 cr\u00c3\u00a8me br\u00c3\u00bbl\u00c3\u00a9e",
    "\u00c3\u00a2\u00e2\u201a\u00ac\u00c5\u201cdouble mojibake\u00c3\u00a2\u00e2\u201a\u00ac\u00c2\u009d",
    "emoji \U0001F431\U0001F44D\U0001F3FD and flags \U0001F1EF\U0001F1F5",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u6f22\u5b57",
    "\ud55c\uad6d\uc5b4 \ubb38\uc7a5 \u4e2d\u6587\u53e5\u5b50",
    "a dog <|endoftext|> a cat",
    "<|startoftext|>starts with the special",
    "open_clip's own <end_of_text> spelling",
    "<START_OF_TEXT> upper case special",
    "x!<end_of_text>y punctuation glued",
    "word" + "<end_of_text>" * 3,
    "   leading and trailing   \t whitespace \n\n newlines  ",
    "non\u00a0breaking\u2003spaces\u200bzero width",
    "ALL CAPS SHOUTING WITH NUMBERS 1234567890",
    "it's they're we've I'm you'll he'd",
    "fullwidth \uff21\uff22\uff23 \uff11\uff12\uff13",
    "ligatures \ufb01 \ufb02 and \u00bd fractions",
    "Combining e\u0301 vs precomposed \u00e9",
    "URL https://example.com/a?b=c&d=e#frag",
    "math \u2200x\u2208\u211d: x\u00b2 \u2265 0",
    "arabic \u0645\u0631\u062d\u0628\u0627 hebrew \u05e9\u05dc\u05d5\u05dd",
    "long " + " ".join(f"word{i}" for i in range(120)),
    "supercalifragilisticexpialidocious" * 12,
    " ".join(["the red circle is left of the blue square"] * 12),
    "",
    "&quot;&gt;&lt;&amp;&nbsp;&copy;",
]


def noise_images(width: int, height: int, seed: int = 0) -> dict[str, Image.Image]:
    """Noise (every pixel differs, so a one-pixel shift shows) in RGB, greyscale, and RGBA with transparent blocks."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    blocks = np.kron(rng.integers(0, 3, (height // 8 + 1, width // 8 + 1)), np.ones((8, 8)))[:height, :width] * 127.5
    rgba = np.dstack([rgb, blocks.astype(np.uint8)])  # alpha 0, 127 and 255 regions
    return {"RGB": Image.fromarray(rgb), "L": Image.fromarray(rgb[..., 0]), "RGBA": Image.fromarray(rgba, "RGBA")}


@pytest.fixture(scope="module")
def processor_dir(tmp_path_factory):
    """The image processor the converter writes for ViT-B-32 (224), saved as in a converted checkpoint."""
    out = tmp_path_factory.mktemp("processor")
    hf_image_processor(model_config("ViT-B-32")).save_pretrained(out)
    return out


# --------------------------------------------------------------------------- pixels
def test_pixels_equal_open_clips_transform_for_every_size_and_mode(processor_dir):
    processor = load_image_processor(processor_dir, backend="pil")
    assert type(processor) is OpenCLIPImageProcessorPil
    plain = AutoImageProcessor.from_pretrained(processor_dir, backend="pil")  # what a reader outside the project loads
    assert type(plain) is CLIPImageProcessorPil
    worst, plain_off = 0.0, []
    photos = [(f"photo {i}", photo) for i, photo in enumerate(sample_photos(("chelsea", "coffee", "rocket")))]
    for (width, height) in SIZES:
        images = noise_images(width, height)
        images.update({f"{name} {width}x{height}": photo.resize((width, height)) for name, photo in photos})
        for name, image in images.items():
            ours = processor(images=image, return_tensors="np")["pixel_values"][0]
            expected = open_clip_eval_transform(image, 224)
            assert ours.shape == expected.shape == (3, 224, 224)
            worst = max(worst, float(np.abs(ours - expected).max()))
            if image.mode == "RGB":  # arrays and tensors take transformers' resize, then the rounded crop
                array = processor(images=np.asarray(image), return_tensors="np")["pixel_values"][0]
                worst = max(worst, float(np.abs(array - expected).max()))
                plain_pixels = plain(images=image, return_tensors="np")["pixel_values"][0]
                plain_off.append(((width, height), float(np.abs(plain_pixels - expected).max())))
    assert worst <= GREY_LEVEL, worst  # measured: 0 (bit-equal) on every size and mode
    # transformers' own CLIP processor is a pixel off exactly where (side - 224) is 3 mod 4 (the defect fixed here)
    shifted = {size for size, error in plain_off if error > GREY_LEVEL}
    assert shifted == {(640, 427), (384, 303), (333, 217), (300, 455)}


def test_torchvision_backend_crop_rounds_as_torchvision(processor_dir):
    """The torchvision backend shares the mixin; without torchvision here its crop is checked on tensors
    (B, C, H, W) against the rule, and the PIL geometry both backends run on PIL inputs is the one tested above."""
    processor = load_image_processor(processor_dir, backend="pil")
    for height, width in [(227, 224), (224, 229), (331, 335), (226, 226)]:
        batch = torch.arange(2 * 3 * height * width).reshape(2, 3, height, width)
        cropped = processor.center_crop(batch, SizeDict(height=224, width=224))
        top, left = int(round((height - 224) / 2.0)), int(round((width - 224) / 2.0))  # torchvision's CenterCrop
        assert torch.equal(cropped, batch[..., top : top + 224, left : left + 224])
    if TORCHVISION:
        torchvision_processor = load_image_processor(processor_dir, backend="torchvision")
        assert torchvision_processor.backend == "torchvision"
        for image in noise_images(640, 427).values():
            ours = torchvision_processor(images=image, return_tensors="np")["pixel_values"][0]
            assert np.abs(ours - open_clip_eval_transform(image, 224)).max() <= GREY_LEVEL


def test_processor_config_is_plain_clip_for_every_reader(processor_dir, tmp_path):
    """No code travels with a converted checkpoint: a process that never imports reasonclip loads the processor
    with plain AutoImageProcessor, no remote code, as transformers' CLIP processor with open_clip's size, mean, std
    and resampling; only the crop rounding (and RGBA handling) is the project's own."""
    config = json.loads((processor_dir / "preprocessor_config.json").read_text())
    assert config["image_processor_type"] == "CLIPImageProcessor" and config["reasonclip_preprocess"] == "open_clip"
    assert "auto_map" not in config and sorted(p.name for p in processor_dir.iterdir()) == ["preprocessor_config.json"]
    image = noise_images(640, 426)["RGB"]  # 426 -> 224: (298 - 224) = 74 = 2 mod 4, both crops agree
    image.save(tmp_path / "rgb.png")
    code = f"""
import sys, numpy as np
from PIL import Image
from transformers import AutoImageProcessor
processor = AutoImageProcessor.from_pretrained({str(processor_dir)!r})
np.save({str(tmp_path / "pixels.npy")!r}, processor(images=Image.open({str(tmp_path / "rgb.png")!r}), return_tensors="np")["pixel_values"][0])
print(type(processor).__name__, processor.reasonclip_preprocess, any(name.startswith("reasonclip") for name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, input="",
                            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] in ("CLIPImageProcessorPil open_clip False", "CLIPImageProcessor open_clip False")
    np.testing.assert_array_equal(np.load(tmp_path / "pixels.npy"), open_clip_eval_transform(image, 224))


# --------------------------------------------------------------------------- tokens
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny ViT-B-32 (context 77) and a custom context-32 model, converted from open_clip training checkpoints."""
    root = tmp_path_factory.mktemp("converted")
    out = {}
    for context in (77, 32):
        config = shrink(model_config("ViT-B-32"), image_size=64)
        config["text_cfg"]["context_length"] = context
        config_path = root / f"ctx{context}.json"
        config_path.write_text(json.dumps(config))
        reference = build_open_clip(config)
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, root / f"ctx{context}.pt")
        out[context] = (convert_open_clip(root / f"ctx{context}.pt", config_path, root / f"hf{context}"), reference)
    return out


def test_token_ids_equal_open_clips_on_30_strings(converted):
    assert len(STRINGS) == 30
    for context, (out, reference) in converted.items():
        config = json.loads((out / "config.json").read_text())
        assert config["reasonclip_text_rule"] == "open_clip"
        model = CLIPModel.from_pretrained(out).eval()
        tokenizer = AutoTokenizer.from_pretrained(out)
        rule = TextRule.for_model(model, tokenizer)
        assert (rule.cleaning, rule.max_length) == ("open_clip", context)
        theirs = open_clip_tokenizer(context)(STRINGS)  # [30, context], zero-padded
        ours = tokenize(tokenizer, STRINGS, rule)
        mask = ours["attention_mask"].bool()
        ids = torch.zeros_like(theirs)
        ids[:, : mask.shape[1]] = ours["input_ids"].masked_fill(~mask, 0)
        assert torch.equal(ids, theirs)
        # the pretraining collator and the encoder benchmarks (zero-shot prompts included) take the same rule
        batch = ReasonCollator(tokenizer, text_rule=rule)([{"index": i, "caption": s} for i, s in enumerate(STRINGS)])
        assert torch.equal(batch["caption_input_ids"], ours["input_ids"])
        embedder = EncoderEmbedder(model, AutoImageProcessor.from_pretrained(out), tokenizer)
        assert embedder.text_rule == rule
        with torch.no_grad():
            features = torch.nn.functional.normalize(reference.encode_text(theirs), dim=-1)
        torch.testing.assert_close(embedder.embed_texts(STRINGS[:8]), features[:8], atol=1e-5, rtol=1e-5)
    # without the rule, Hugging Face's CLIP tokenizer gives other ids on half of them
    plain = clip_tokenizer()
    theirs = open_clip_tokenizer(77)(STRINGS)
    differ = sum(plain(s, truncation=True, max_length=77)["input_ids"] != theirs[i][: len(plain(s, truncation=True, max_length=77)["input_ids"])].tolist()
                 for i, s in enumerate(STRINGS))
    assert differ >= 12


# --------------------------------------------------------------------------- activation and names
def test_pretrained_tags_resolve_the_activation_from_open_clips_table():
    table = open_clip_module("pretrained")
    for model in ("ViT-B-32/openai", "ViT-B-32:openai", "ViT-L-14-336/openai", "ViT-B-32-quickgelu/metaclip_400m"):
        name, config, why = resolve_open_clip_model(model)
        base, tag = name.split("/")
        assert table.get_pretrained_cfg(base, tag)["quick_gelu"] is True
        assert hf_clip_config(config).vision_config.hidden_act == "quick_gelu" and "pretrained table" in why
    name, config, why = resolve_open_clip_model("ViT-B-32/laion2b_s34b_b79k")  # trained with exact GELU
    assert hf_clip_config(config).text_config.hidden_act == "gelu" and "exact GELU" in why
    with pytest.raises(ValueError, match="open_clip lists 'laion2b_s34b_b79k' under ViT-B-32"):
        resolve_open_clip_model("ViT-B-32-quickgelu/laion2b_s34b_b79k")
    with pytest.raises(ValueError, match="its tags: openai"):
        resolve_open_clip_model("ViT-L-14-336/no_such_tag")


def test_activation_is_printed_and_the_quickgelu_trap_refused_where_recorded(tmp_path, capsys, monkeypatch):
    gelu = shrink(model_config("ViT-B-32"), image_size=64)
    reference = build_open_clip(gelu)
    checkpoint = tmp_path / "hub" / "open_clip_pytorch_model.bin"
    checkpoint.parent.mkdir()
    torch.save(reference.state_dict(), checkpoint)
    quick_path, gelu_path = tmp_path / "quick.json", tmp_path / "gelu.json"
    quick_path.write_text(json.dumps({**gelu, "quick_gelu": True}))
    gelu_path.write_text(json.dumps(gelu))
    capsys.readouterr()

    def convert(model, out):
        code = main(["convert", "open_clip", str(checkpoint), "--model", str(model), "--out", str(tmp_path / out)])
        return code, capsys.readouterr()

    # nothing records the activation: converted, and the print names the risk
    code, captured = convert(quick_path, "bare")
    assert code == 0 and "activation: quick_gelu, because the model config" in captured.out
    assert "does not record its activation" in captured.out and "weights trained with gelu would convert silently" in captured.out
    # the Hub layout records it: a name that disagrees is refused in one line, nothing written
    (checkpoint.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": gelu, "preprocess_cfg": {}}))
    code, captured = convert(quick_path, "trap")
    assert code == 2 and len(captured.err.strip().splitlines()) == 1 and "was trained with gelu" in captured.err
    assert not (tmp_path / "trap").exists()
    code, captured = convert(checkpoint.parent / "open_clip_config.json", "from_hub")
    assert code == 0 and "open_clip_config.json beside the checkpoint agrees" in captured.out

    # open_clip importable: one forward of open_clip's own CLIP on the checkpoint must agree with the conversion
    (checkpoint.parent / "open_clip_config.json").unlink()
    model_module, tokenizer_module = open_clip_model_module(), open_clip_module("tokenizer")
    agreeing = types.SimpleNamespace(CLIP=model_module.CLIP, tokenize=tokenizer_module.tokenize)
    monkeypatch.setattr(converter, "_open_clip_api", lambda: agreeing)
    code, captured = convert(gelu_path, "checked")
    assert code == 0 and "open_clip's own forward agrees" in captured.out
    # ... and a forward that differs (open_clip running the other activation on these weights) is refused
    other = types.SimpleNamespace(CLIP=lambda **kw: model_module.CLIP(**{**kw, "quick_gelu": not kw.get("quick_gelu", False)}),
                                  tokenize=tokenizer_module.tokenize)
    monkeypatch.setattr(converter, "_open_clip_api", lambda: other)
    code, captured = convert(gelu_path, "refused")
    assert code == 2 and "differ from open_clip's own forward" in captured.err and not (tmp_path / "refused").exists()


# --------------------------------------------------------------------------- prefixes and wrappers
def test_prefixes_and_wrappers_are_recognised_or_named(tmp_path, capsys):
    config = shrink(model_config("ViT-B-32"), image_size=64)
    state = build_open_clip(config).state_dict()
    keys = list(state)
    layouts = {
        "compiled": {f"_orig_mod.{k}": v for k, v in state.items()},                     # saved after torch.compile
        "ddp_compiled": {"state_dict": {f"module._orig_mod.{k}": v for k, v in state.items()}, "epoch": 3},
        "model_wrapper": {"model": state},
        "mixed": {(f"module.{k}" if i % 2 else k): v for i, (k, v) in enumerate(state.items())},
    }
    for name, loaded in layouts.items():
        torch.save(loaded, tmp_path / f"{name}.pt")
        read = load_open_clip_state_dict(tmp_path / f"{name}.pt")
        assert list(read) == keys and all(torch.equal(read[k], state[k]) for k in keys), name
    assert "prefixes removed: _orig_mod." in capsys.readouterr().out
    torch.save({f"clip.{k}": v for k, v in state.items()}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match=r"the weights carry the prefix 'clip\.' \(e\.g\. 'clip\.visual\.conv1\.weight'\)"):
        load_open_clip_state_dict(tmp_path / "foreign.pt")
    torch.save({**state, f"module.{keys[0]}": state[keys[0]]}, tmp_path / "twice.pt")
    with pytest.raises(ValueError, match=f"weight '{keys[0]}' is in the file twice"):
        load_open_clip_state_dict(tmp_path / "twice.pt")
    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "no_weights.pt")
    with pytest.raises(ValueError, match="holds no tensor state dict"):
        load_open_clip_state_dict(tmp_path / "no_weights.pt")


# --------------------------------------------------------------------------- real size
@torch.no_grad()
def test_vit_l_14_336_at_real_width_pixels_tokens_features():
    """The LLaVA tower shape at real width (1024 / 768, patch 14, 336 px, 77 tokens), one layer per tower, fp32:
    a real photo through our processor, captions through our text rule, then features against open_clip's."""
    config = model_config("ViT-L-14-336")
    config["vision_cfg"]["layers"], config["text_cfg"]["layers"] = 1, 1
    reference = build_open_clip(config)
    clip = CLIPModel(hf_clip_config(config)).eval()
    clip.load_state_dict(convert_state_dict(reference.state_dict(), config))
    photos = sample_photos(("chelsea", "coffee"))
    pixels = torch.from_numpy(hf_image_processor(config)(images=photos, return_tensors="np")["pixel_values"])
    expected = np.stack([open_clip_eval_transform(photo, 336) for photo in photos])
    assert pixels.shape == (2, 3, 336, 336) and np.abs(pixels.numpy() - expected).max() <= GREY_LEVEL
    captions = STRINGS[1:4]
    clip.config.reasonclip_text_rule = "open_clip"  # as the converter records it
    tokens = tokenize(clip_tokenizer(), captions, TextRule.for_model(clip.config))
    theirs = open_clip_tokenizer(77)(captions)
    assert torch.equal(tokens["input_ids"][tokens["attention_mask"].bool()], theirs[:, : tokens["input_ids"].shape[1]][tokens["attention_mask"].bool()])
    image = clip.get_image_features(pixel_values=pixels).pooler_output
    text = clip.get_text_features(**tokens).pooler_output
    for ours, ref in ((image, reference.encode_image(torch.from_numpy(expected))), (text, reference.encode_text(theirs))):
        assert float((ours - ref).norm() / ref.norm()) <= 1e-5


# --------------------------------------------------------------------------- the dry run refuses what the run refuses
@pytest.mark.slow
def test_dry_run_refuses_what_the_run_refuses(converted, tmp_path, capsys):
    ws = make_workspace(tmp_path / "ws")
    short, _ = converted[32]  # 32 text positions; the tiny recipes ask for data.max_length 77
    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("someone else's files")
    cases = {
        "config key 'data.max_length' must be <= 32": ([], short, "run"),
        "needs a CUDA GPU of compute capability >= 8.9": (["--runtime.fp8=tensorwise"], None, "run"),
        "ZeRO-3 partitions the weights the stage-1 L2 anchor reads": ([f"--runtime.deepspeed={zero3}"], None, "run"),
        "no DeepSpeed JSON at": ([f"--runtime.deepspeed={tmp_path / 'absent.json'}"], None, "run"),
        "is not empty, it holds files": ([], None, "taken"),
    }
    capsys.readouterr()
    with single_thread():
        for message, (extra, model, out) in cases.items():
            args = [str(recipe("stage1")), *stage_args(ws, "stage1", tmp_path / out, "--schedule.max_steps=1", *extra, model=model)]
            lines = []
            for dry in (["--dry-run"], []):
                assert main(["pretrain", *args, *dry]) == 2, (message, dry)
                lines.append([line for line in capsys.readouterr().err.splitlines() if "error:" in line][-1].split("error: ", 1)[1])
            assert lines[0] == lines[1] and message in lines[0], lines
            assert not (tmp_path / "run").exists()
        # a converted model's plan shows the text rule its captions are tokenized with
        long, _ = converted[77]
        assert main(["pretrain", str(recipe("stage1")), *stage_args(ws, "stage1", tmp_path / "run", model=long), "--dry-run"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert plan["text"] == {"max_length": 77, "padding": "longest", "attention_mask_passed": False, "lowercase": False, "cleaning": "open_clip"}
