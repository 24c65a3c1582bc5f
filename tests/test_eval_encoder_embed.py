"""The embedder (batching, caching, SigLIP, both transformers return types) and the error paths."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from reasonclip_llava.evaluation.encoder import EncoderEmbedder, ImageRef, evaluate_encoder, resolve_benchmark

FIXTURES = Path(__file__).parent / "fixtures" / "encoder"
IMAGES = FIXTURES / "images"


def count_encodes(embedder: EncoderEmbedder) -> dict:
    """Wrap the per-batch model calls so the test sees how many images / texts reach the model."""
    calls = {"images": 0, "texts": 0, "image_batches": 0}
    encode_images, encode_texts = embedder._encode_images, embedder._encode_texts

    def images(batch):
        calls["images"] += len(batch)
        calls["image_batches"] += 1
        return encode_images(batch)

    def texts(batch):
        calls["texts"] += len(batch)
        return encode_texts(batch)

    embedder._encode_images, embedder._encode_texts = images, texts
    return calls


def sugarcrepe_rows() -> list[dict]:
    return [row for path in sorted((FIXTURES / "sugarcrepe").glob("*.json")) for row in json.loads(path.read_text()).values()]


# ---- caching and batching ---------------------------------------------------------------------------


def test_each_unique_image_and_text_is_embedded_once(tiny_clip_dir):
    embedder = EncoderEmbedder.from_pretrained(tiny_clip_dir, batch_size=4)
    calls = count_encodes(embedder)
    result = evaluate_encoder(tiny_clip_dir, "sugarcrepe", FIXTURES / "sugarcrepe", IMAGES / "val2017", embedder=embedder)
    rows = sugarcrepe_rows()
    unique_images = {row["filename"] for row in rows}
    unique_texts = {row[key] for row in rows for key in ("caption", "negative_caption")}
    assert result["n_items"] == len(rows) > len(unique_images)  # images repeat across subsets
    assert calls["images"] == len(unique_images)
    assert calls["image_batches"] == math.ceil(len(unique_images) / 4)
    assert calls["texts"] == len(unique_texts)
    assert result["embedding"]["images_encoded"] == len(unique_images)
    # A second benchmark on the same COCO images reuses the cache: no image reaches the model again.
    evaluate_encoder(tiny_clip_dir, "sugarcrepe_pp", FIXTURES / "sugarcrepe_pp", IMAGES / "val2017", embedder=embedder)
    assert calls["images"] == len(unique_images)


def test_batch_size_does_not_change_results(tiny_clip_dir):
    results = [evaluate_encoder(tiny_clip_dir, "whatsup", FIXTURES / "whatsup", IMAGES, batch_size=size) for size in (1, 64)]
    assert results[0]["subsets"] == results[1]["subsets"]
    refs = [ImageRef((IMAGES / "val2017" / f"{i:012d}.jpg").resolve()) for i in range(1, 7)]
    one = EncoderEmbedder.from_pretrained(tiny_clip_dir, batch_size=1).embed_images(refs)
    many = EncoderEmbedder.from_pretrained(tiny_clip_dir, batch_size=64).embed_images(refs)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-4)
    assert torch.allclose(one.norm(dim=-1), torch.ones(len(refs)), atol=1e-5)  # L2-normalised


def test_bfloat16_checkpoint_is_evaluated_in_its_dtype(tiny_clip_dir, tmp_path):
    from transformers import CLIPModel

    model_dir = Path(shutil.copytree(tiny_clip_dir, tmp_path / "bf16"))
    CLIPModel.from_pretrained(model_dir).to(torch.bfloat16).save_pretrained(model_dir)
    embedder = EncoderEmbedder.from_pretrained(model_dir)
    assert embedder.model.dtype == torch.bfloat16
    ref = [ImageRef((IMAGES / "val2017" / "000000000001.jpg").resolve())]
    reference = EncoderEmbedder.from_pretrained(tiny_clip_dir).embed_images(ref)
    embedding = embedder.embed_images(ref)
    assert embedding.dtype == torch.float32 and torch.allclose(embedding, reference, atol=0.05)
    assert EncoderEmbedder.from_pretrained(model_dir, dtype="float32").model.dtype == torch.float32


class TensorReturningClip(torch.nn.Module):
    """A dual encoder with the transformers-4 API: get_*_features return plain tensors."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def get_image_features(self, **inputs):
        return self.inner.get_image_features(**inputs).pooler_output

    def get_text_features(self, **inputs):
        return self.inner.get_text_features(**inputs).pooler_output


def test_tensor_and_model_output_return_types_give_the_same_embeddings(tiny_clip_dir):
    modern = EncoderEmbedder.from_pretrained(tiny_clip_dir)
    legacy = EncoderEmbedder(TensorReturningClip(modern.model), modern.image_processor, modern.tokenizer)
    ref = [ImageRef((IMAGES / "val2017" / "000000000001.jpg").resolve())]
    torch.testing.assert_close(modern.embed_images(ref), legacy.embed_images(ref))
    torch.testing.assert_close(modern.embed_texts(["a red dog"]), legacy.embed_texts(["a red dog"]))


# ---- SigLIP -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def siglip_with_tokenizer(tiny_siglip_dir, tmp_path_factory):
    """The tiny SigLIP plus a word-level tokenizer over the fixture vocabulary (the builder saves none)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model_dir = tmp_path_factory.mktemp("siglip") / "tiny_siglip"
    shutil.copytree(tiny_siglip_dir, model_dir)
    words = sorted({w for row in sugarcrepe_rows() for k in ("caption", "negative_caption") for w in re.findall(r"\w+", row[k].lower())})
    vocab = {"<unk>": 0, "</s>": 1, **{word: i + 2 for i, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer, backend.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="</s>", eos_token="</s>", model_max_length=16)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def test_siglip_checkpoint_matches_its_own_forward(siglip_with_tokenizer):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, SiglipModel

    result = evaluate_encoder(siglip_with_tokenizer, "sugarcrepe", FIXTURES / "sugarcrepe", IMAGES / "val2017")
    model = SiglipModel.from_pretrained(siglip_with_tokenizer).eval()
    processor, tokenizer = AutoImageProcessor.from_pretrained(siglip_with_tokenizer), AutoTokenizer.from_pretrained(siglip_with_tokenizer)
    flags = []
    for row in sugarcrepe_rows():
        ids = tokenizer([row["caption"], row["negative_caption"]], padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
        pixels = processor(images=[Image.open(IMAGES / "val2017" / row["filename"]).convert("RGB")], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            pos, neg = model(input_ids=ids, pixel_values=pixels).logits_per_image[0].tolist()
        flags.append(pos > neg)
    assert result["micro"]["accuracy"] == pytest.approx(100.0 * sum(flags) / len(flags))


def test_siglip_without_tokenizer_embeds_images_but_names_the_missing_tokenizer(tiny_siglip_dir):
    embedder = EncoderEmbedder.from_pretrained(tiny_siglip_dir)
    assert embedder.embed_images([ImageRef((IMAGES / "val2017" / "000000000001.jpg").resolve())]).shape[0] == 1
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        embedder.embed_texts(["a dog"])


# ---- errors: one line naming the problem ------------------------------------------------------------


def copy_fixture(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def test_every_benchmark_documents_its_data_layout():
    from reasonclip_llava.evaluation.encoder import BENCHMARKS, DATA_LAYOUT

    assert set(DATA_LAYOUT) == set(BENCHMARKS)


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown benchmark 'imagenet-sketch'.*sugarcrepe"):
        resolve_benchmark("imagenet-sketch")
    assert resolve_benchmark("SugarCrepe++") == "sugarcrepe_pp" and resolve_benchmark("rclip-bench") == "rclip_bench"


def test_missing_subset_file_is_named(tiny_clip_dir, tmp_path):
    data = copy_fixture(tmp_path, "sugarcrepe")
    (data / "swap_obj.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"subset 'swap_obj'.*swap_obj\.json"):
        evaluate_encoder(tiny_clip_dir, "sugarcrepe", data, IMAGES / "val2017")


def test_missing_data_path_is_named(tiny_clip_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate_encoder(tiny_clip_dir, "valse", tmp_path / "nowhere", IMAGES)


@pytest.mark.parametrize("name, fixture, file_name, edit, message", [
    ("sugarcrepe", "sugarcrepe", "add_att.json", lambda d: d["0"].pop("negative_caption"), r"add_att\.json item 0: missing field 'negative_caption'"),
    ("valse", "valse", "existence.json", lambda d: d["existence_1"].pop("mturk"), r"existence\.json item existence_1: missing field 'mturk'"),
    ("whatsup", "whatsup", "coco_qa_one_obj.json", lambda d: d[1].__setitem__(slice(1, None), []), r"coco_qa_one_obj\.json item 1"),
    ("aro", "aro", "visual_genome_relation.json", lambda d: d[2].__setitem__("bbox_w", "wide"), r"item 2: field 'bbox_w'"),
])
def test_malformed_row_names_file_row_and_field(tiny_clip_dir, tmp_path, name, fixture, file_name, edit, message):
    data = copy_fixture(tmp_path, fixture)
    rows = json.loads((data / file_name).read_text())
    edit(rows)
    (data / file_name).write_text(json.dumps(rows))
    images = {"sugarcrepe": IMAGES / "val2017", "valse": IMAGES / "val2017", "whatsup": IMAGES, "aro": IMAGES / "vg_images"}[name]
    with pytest.raises(ValueError, match=message):
        evaluate_encoder(tiny_clip_dir, name, data, images)


def test_malformed_crepe_rows(tiny_clip_dir, tmp_path):
    csv_path = tmp_path / "complexity_4.csv"
    csv_path.write_text("image_id,x,y,width,height,caption,hard_negs\n2315001,0,0,10,10,a dog,not a list\n")
    with pytest.raises(ValueError, match=r"complexity_4\.csv row 2: malformed box or hard_negs"):
        evaluate_encoder(tiny_clip_dir, "crepe", csv_path, IMAGES / "vg_images")


def test_missing_image_is_named_not_skipped(tiny_clip_dir, tmp_path):
    data = copy_fixture(tmp_path, "sugarcrepe")
    rows = json.loads((data / "swap_att.json").read_text())
    rows["1"]["filename"] = "000000999999.jpg"
    (data / "swap_att.json").write_text(json.dumps(rows))
    with pytest.raises(FileNotFoundError, match=r"swap_att\.json item 1: image not found: .*000000999999\.jpg"):
        evaluate_encoder(tiny_clip_dir, "sugarcrepe", data, IMAGES / "val2017")


def test_unreadable_image_is_named_and_earlier_results_survive(tiny_clip_dir, tmp_path):
    out = tmp_path / "run"
    first = evaluate_encoder(tiny_clip_dir, "sugarcrepe", FIXTURES / "sugarcrepe", IMAGES / "val2017", out_dir=out)
    saved = (out / "sugarcrepe.json").read_text()
    images = Path(shutil.copytree(IMAGES / "val2017", tmp_path / "val2017"))
    (images / "000000000003.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match=r"cannot read image .*000000000003\.jpg"):
        evaluate_encoder(tiny_clip_dir, "sugarcrepe", FIXTURES / "sugarcrepe", images, out_dir=out)
    assert (out / "sugarcrepe.json").read_text() == saved  # the failed run wrote nothing
    assert json.loads(saved)["micro"] == first["micro"]
