"""The one image-loading rule (reasonclip_llava.images): modes against independent references, EXIF
orientation, the decompression-bomb limit, one-line errors; and the same file gives bitwise the same
pixel_values in training (LlavaConversationDataset) and evaluation (generate.prepare_inputs) for every
mode, both architectures and every aspect-ratio mode."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_transforms import convert_to_rgb

from reasonclip_llava.evaluation.benchmarks import VQAQuestion
from reasonclip_llava.evaluation.generate import prepare_inputs
from reasonclip_llava.images import image_size, load_image
from reasonclip_llava.mllm_train.data import LlavaConversationDataset, LlavaDataCollator
from reasonclip_llava.testing.tiny_lm import build_tiny_lm
from reasonclip_llava.vlm.architectures import get_architecture
from reasonclip_llava.vlm.build import build_llava, save_llava

WIDTH, HEIGHT = 45, 23  # odd and non-square: anyres picks a 2-tile grid, pad adds bands


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _rgb(seed: int) -> np.ndarray:
    return _rng(seed).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


def _alpha(seed: int) -> np.ndarray:
    alpha = _rng(seed).integers(0, 256, size=(HEIGHT, WIDTH), dtype=np.uint8)
    alpha[:, : WIDTH // 3] = 0  # fully transparent pixels that still hold a (random) colour
    return alpha


def write_images(folder) -> dict[str, dict]:
    """One file per mode; `array` is what was written (the reference computations start from it)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, dict] = {}

    def save(name: str, image: Image.Image, **kwargs) -> None:
        image.save(folder / name, **kwargs)

    rgba = np.dstack([_rgb(1), _alpha(2)])
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    cases["RGBA"] = dict(file="rgba.png", array=rgba)
    la = np.dstack([_rgb(3)[..., 0], _alpha(4)])
    save("la.png", Image.fromarray(la, "LA"))
    cases["LA"] = dict(file="la.png", array=la)
    palette = Image.fromarray(_rgb(5)).quantize(colors=16)
    save("p_transparency.png", palette, transparency=3)  # palette index 3 is transparent (tRNS)
    cases["P+transparency"] = dict(file="p_transparency.png", array=None)
    save("cmyk.jpg", Image.fromarray(_rgb(6)).convert("CMYK"), quality=95)
    cases["CMYK"] = dict(file="cmyk.jpg", array=None)
    sixteen = _rng(7).integers(0, 65536, size=(HEIGHT, WIDTH), dtype=np.uint16)
    save("gray16.png", Image.fromarray(sixteen))  # opens as I;16
    cases["I;16"] = dict(file="gray16.png", array=sixteen)
    wide = _rng(8).integers(-500, 70000, size=(HEIGHT, WIDTH)).astype(np.int32)
    save("int32.tif", Image.fromarray(wide, "I"))
    cases["I"] = dict(file="int32.tif", array=wide)
    floats = _rng(9).uniform(-0.1, 1.1, size=(HEIGHT, WIDTH)).astype(np.float32)
    save("float.tif", Image.fromarray(floats, "F"))
    cases["F"] = dict(file="float.tif", array=floats)
    rotated = _rgb(10)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    save("exif6.png", Image.fromarray(rotated), exif=exif)
    cases["RGB+EXIF 6"] = dict(file="exif6.png", array=rotated)
    save("rgb.png", Image.fromarray(_rgb(11)))
    cases["RGB"] = dict(file="rgb.png", array=_rgb(11))
    return cases


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("image_modes")
    return folder, write_images(folder)


def test_modes_follow_the_rule(images):
    folder, cases = images
    opened = {mode: Image.open(folder / case["file"]) for mode, case in cases.items()}
    assert [opened[m].mode for m in ("RGBA", "LA", "P+transparency", "CMYK", "I;16", "I", "F")] == \
        ["RGBA", "LA", "P", "CMYK", "I;16", "I", "F"]
    loaded = {mode: load_image(folder / case["file"]) for mode, case in cases.items()}
    assert all(image.mode == "RGB" for image in loaded.values())

    # Transparency: transformers' own convert_to_rgb (composite on white) on the raw file.
    for mode in ("RGBA", "LA", "P+transparency"):
        assert np.array_equal(np.asarray(loaded[mode]), convert_to_rgb(opened[mode], return_numpy=True)), mode
    # ... which a plain convert('RGB') is not: transparent pixels kept their stored colour.
    rgba = cases["RGBA"]["array"]
    assert np.array_equal(np.asarray(loaded["RGBA"])[:, : WIDTH // 3], np.full((HEIGHT, WIDTH // 3, 3), 255))
    assert not np.array_equal(np.asarray(opened["RGBA"].convert("RGB")), np.asarray(loaded["RGBA"]))
    # Partial alpha, written out: a * rgb + (1 - a) * 255 (PIL's integer compositing: within 1 level).
    a = rgba[..., 3:].astype(np.float64) / 255
    blended = a * rgba[..., :3] + (1 - a) * 255
    assert np.abs(np.asarray(loaded["RGBA"]).astype(np.float64) - blended).max() <= 1.0

    # High bit depth, written out from the arrays saved: 16 bit -> round(v / 257); I clipped to 16 bit; F as [0, 1].
    def grey(values: np.ndarray) -> np.ndarray:
        return np.repeat(values.astype(np.uint8)[..., None], 3, axis=-1)

    assert np.array_equal(np.asarray(loaded["I;16"]), grey(np.rint(cases["I;16"]["array"] / 257)))
    assert np.array_equal(np.asarray(loaded["I"]), grey(np.rint(np.clip(cases["I"]["array"], 0, 65535) / 257)))
    assert np.array_equal(np.asarray(loaded["F"]), grey(np.rint(np.clip(cases["F"]["array"].astype(np.float64), 0, 1) * 255)))
    assert np.asarray(opened["I;16"].convert("RGB")).mean() > 250  # PIL alone clips a 16-bit image to white
    # CMYK: PIL's conversion, as transformers.
    assert np.array_equal(np.asarray(loaded["CMYK"]), np.asarray(opened["CMYK"].convert("RGB")))
    # EXIF orientation 6 = rotated 90 degrees clockwise for display; the header-only size agrees.
    assert np.array_equal(np.asarray(loaded["RGB+EXIF 6"]), np.rot90(cases["RGB+EXIF 6"]["array"], k=-1))
    assert image_size(folder / cases["RGB+EXIF 6"]["file"]) == (HEIGHT, WIDTH) == loaded["RGB+EXIF 6"].size
    assert np.array_equal(np.asarray(loaded["RGB"]), cases["RGB"]["array"])
    for image in opened.values():
        image.close()


def test_bad_images_are_one_line(tmp_path, monkeypatch):
    Image.fromarray(_rgb(0)).save(tmp_path / "ok.png")
    with pytest.raises(ValueError, match=r"^sample 'a': cannot read image .*ok\.png: 45 x 23 = 1,035 pixels, over the limit of 1,000"):
        load_image(tmp_path / "ok.png", owner="sample 'a'", max_pixels=1000)
    # PIL's own bomb error (at twice its MAX_IMAGE_PIXELS, raised inside open) becomes the same kind of line.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=r"cannot read image .*ok\.png: .*decompression bomb") as info:
        load_image(tmp_path / "ok.png", max_pixels=10**9)
    monkeypatch.undo()
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_bytes(b"not an image at all")
    errors = []
    for name, kind in (("cut.png", ValueError), ("text.jpg", ValueError), ("gone.png", FileNotFoundError)):
        with pytest.raises(kind, match=rf"^question 7: (cannot read image|image not found).*{name.replace('.', '[.]')}") as info:
            load_image(tmp_path / name, owner="question 7")
        errors.append(str(info.value))
    with pytest.raises(ValueError, match=r"^row 3: cannot decode the embedded image bytes"):
        load_image(io.BytesIO(b"\x89PNG broken"), owner="row 3")
    assert all("\n" not in error for error in errors)


# ---- training pixels == evaluation pixels ----------------------------------------------------------

ARCH_MODES = [("llava_next", "anyres"), ("llava", "pad"), ("llava", "square")]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_clip_dir):
    """One saved tiny checkpoint per (architecture, aspect mode); evaluation reloads its processor from disk."""
    root = tmp_path_factory.mktemp("pixel_parity")
    lm = build_tiny_lm(root / "lm", "qwen2")
    out = {}
    for arch, aspect in ARCH_MODES:
        model, processor = build_llava(lm, tiny_clip_dir, arch=arch, image_aspect_ratio=aspect)
        get_architecture(arch).set_image_aspect_ratio(processor, aspect)  # as training saves it
        out[arch, aspect] = save_llava(model, processor, root / f"{arch}-{aspect}")
    return out


def test_training_and_evaluation_see_the_same_pixels(images, checkpoints, tmp_path):
    folder, cases = images
    rows = [{"id": mode, "image": case["file"], "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Red."}]}
        for mode, case in cases.items()]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    table = {}
    for (arch, aspect), checkpoint in checkpoints.items():
        processor = get_architecture(arch).processor_class.from_pretrained(checkpoint)  # what evaluation loads
        dataset = LlavaConversationDataset(tmp_path / "rows.json", folder, processor, "qwen_1_5", 4096,
                                           image_aspect_ratio=aspect)
        collate = LlavaDataCollator(processor.tokenizer.pad_token_id)
        for index, mode in enumerate(cases):
            # Model inputs on both sides: the training batch of this row, the evaluation batch of this question.
            trained = collate([dataset[index]])["pixel_values"]
            question = VQAQuestion(question_id=mode, image=str(folder / cases[mode]["file"]), prompt="What colour is it?")
            evaluated = prepare_inputs(processor, [question])["pixel_values"].float()
            # The processor alone on the raw file: equal for what transformers handles itself (transparency,
            # CMYK, plain RGB); not for EXIF rotation or high bit depth, which only the shared loader fixes.
            with Image.open(folder / cases[mode]["file"]) as raw:
                alone = processor(images=raw, text="<image>", return_tensors="pt")["pixel_values"].float()
                old = processor(images=raw.convert("RGB"), text="<image>", return_tensors="pt")["pixel_values"].float()
            table[mode, arch, aspect] = (torch.equal(trained, evaluated),
                                         alone.shape == trained.shape and torch.equal(alone, trained),
                                         (old - trained).abs().max().item() if old.shape == trained.shape else float("nan"))
    print("\nimage mode        arch        aspect   train==eval  ==processor(raw file)  convert('RGB') max|diff|")
    for (mode, arch, aspect), (equal, raw_equal, old_diff) in table.items():
        print(f"{mode:17} {arch:11} {aspect:8} {str(equal):12} {str(raw_equal):22} {old_diff:.2f}")
    assert all(row[0] for row in table.values()), [key for key, row in table.items() if not row[0]]
    for mode in ("RGBA", "LA", "P+transparency", "CMYK", "RGB"):
        assert all(table[mode, arch, aspect][1] for arch, aspect in ARCH_MODES), mode
    for mode in ("I;16", "F", "RGB+EXIF 6"):
        assert not any(table[mode, arch, aspect][1] for arch, aspect in ARCH_MODES), mode
