"""RCLIP-Bench as released, scored as eval_RCLIP.py; the one text-encoding rule for SigLIP / SigLIP 2 / CLIP.

Fixtures are written here from METHOD.md's schema (one parquet per version under data/, rows = images,
`sets` list<struct<tag, gt, neg[4]>>, `image` struct<bytes, path> with PNG bytes embedded). The
reference is a plain transformers CLIPModel forward per set and torch.argmax (the first maximum, so a
tie goes to gt), the authors' decision rule.
"""

from __future__ import annotations

import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from reasonclip_llava.evaluation.encoder import EncoderEmbedder, evaluate_encoder

WORDS = ["red", "blue", "dog", "cat", "left", "right", "above", "small", "large", "moving", "falling", "tree"]


def png_bytes(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (40, 36), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(2):
        x, y = rng.randrange(30), rng.randrange(26)
        image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 9, y + 9))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def caption(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 7)))


def released_rows(version: str, num_images: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for k in range(num_images):
        sets = []
        for tag in ("Spatial", "Temporal", "Physical")[: 1 + k % 3]:
            gt = caption(rng)
            # the traps: negatives identical to gt tie with it, which eval_RCLIP.py's argmax counts as right
            # (all four: always a tie at the top; one: a tie that matters only when gt leads)
            trap = (k + len(sets)) % 4
            neg = [gt if trap == 0 or (trap == 1 and j == 2) else caption(rng) for j in range(4)]
            sets.append({"tag": tag, "gt": f" {gt} ", "neg": neg})  # the authors strip gt and neg
        name = f"docci_{version}_{k}.png"
        rows.append({"id": f"{version}-{k}", "image_name": name, "text": caption(rng), "version": version,
                     "sets": sets, "image": {"bytes": png_bytes(seed * 100 + k), "path": name}})
    return rows


def write_released(root, versions=(("v1", 6), ("v2", 4))):
    (root / "data").mkdir(parents=True, exist_ok=True)
    for number, (version, count) in enumerate(versions):
        pq.write_table(pa.Table.from_pylist(released_rows(version, count, seed=number + 1)),
                       root / "data" / f"{version}-00000-of-00001.parquet")
    return root


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_released(tmp_path_factory.mktemp("RCLIP-Bench"))


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    return (CLIPModel.from_pretrained(tiny_clip_dir).eval(), AutoImageProcessor.from_pretrained(tiny_clip_dir),
            AutoTokenizer.from_pretrained(tiny_clip_dir))


def reference_sets(clip, bench) -> list[dict]:
    """eval_RCLIP.py by hand: per set, logits_per_image over [gt, neg1..4] and argmax == 0."""
    model, processor, tokenizer = clip
    out = []
    for path in sorted((bench / "data").glob("*.parquet")):
        version = path.name.split("-")[0]
        for row in pq.read_table(path).to_pylist():
            image = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
            for item in row["sets"]:
                texts = [item["gt"].strip()] + [n.strip() for n in item["neg"]]
                # each distinct text once, so equal texts tie exactly (rows of one batch can differ in the last bit)
                unique = list(dict.fromkeys(texts))
                inputs = tokenizer(unique, padding=True, truncation=True, max_length=77, return_tensors="pt")
                with torch.no_grad():
                    per_text = model(**inputs, pixel_values=processor(images=[image], return_tensors="pt")["pixel_values"]).logits_per_image[0]
                logits = per_text[[unique.index(text) for text in texts]]
                out.append({"version": version, "tag": item["tag"], "logits": logits.tolist(), "correct": int(torch.argmax(logits)) == 0,
                            "tie": texts[0] in texts[1:]})
    return out


def pct(flags) -> float:
    flags = list(flags)
    return 100.0 * sum(flags) / len(flags)


def test_accuracy_per_version_tag_and_overall_equals_plain_clipmodel(tiny_clip_dir, clip, bench, tmp_path):
    result = evaluate_encoder(tiny_clip_dir, "rclip_bench", bench, None, out_dir=tmp_path)
    expected = reference_sets(clip, bench)
    top_ties = [r for r in expected if r["tie"] and r["logits"][0] == max(r["logits"])]
    assert top_ties and all(r["correct"] for r in top_ties)  # ties go to gt (a strict rule would fail them)
    for version in ("v1", "v2"):
        mine = [r for r in expected if r["version"] == version]
        assert result["subsets"][version] == {"n": len(mine), "accuracy": pytest.approx(pct(r["correct"] for r in mine))}
        for tag in {r["tag"] for r in mine}:
            assert result["tags"][version][tag]["accuracy"] == pytest.approx(pct(r["correct"] for r in mine if r["tag"] == tag))
        assert result["headline"][f"RCLIP-Bench {version}"] == pytest.approx(pct(r["correct"] for r in mine))
    assert result["headline"]["RCLIP-Bench"] == pytest.approx(pct(r["correct"] for r in expected))
    assert "micro" in result["aggregation"]["RCLIP-Bench"] and "tie goes to gt" in result["aggregation"]["RCLIP-Bench"]
    # per-set scores are logit_scale * cosine, as the authors print them
    items = [json.loads(line) for line in open(result["items_path"])]
    assert [i["correct"] for i in items] == [r["correct"] for r in expected]
    for item, ref in zip(items, expected):
        assert item["scores"] == pytest.approx(ref["logits"], abs=1e-4)
    # the report names how each headline was computed
    from reasonclip_llava.evaluation.report import write_report

    markdown, _ = write_report([tmp_path / "rclip_bench.json"], tmp_path / "report")
    text = markdown.read_text()
    assert "## How each headline is computed" in text and f"- RCLIP-Bench: {result['aggregation']['RCLIP-Bench']}" in text


def test_single_file_and_data_folder_read_the_same(tiny_clip_dir, bench):
    embedder = EncoderEmbedder.from_pretrained(tiny_clip_dir)
    whole = evaluate_encoder(tiny_clip_dir, "rclip_bench", bench, None, embedder=embedder)
    one = evaluate_encoder(tiny_clip_dir, "rclip_bench", bench / "data" / "v2-00000-of-00001.parquet", None, embedder=embedder)
    inner = evaluate_encoder(tiny_clip_dir, "rclip_bench", bench / "data", None, embedder=embedder)
    assert one["subsets"] == {"v2": whole["subsets"]["v2"]}
    assert inner["subsets"] == whole["subsets"]


def test_retrieval_variant_matches_brute_force(tiny_clip_dir, clip, bench):
    model, processor, tokenizer = clip
    result = evaluate_encoder(tiny_clip_dir, "rclip_bench_retrieval", bench, None)
    rows = pq.read_table(bench / "data" / "v1-00000-of-00001.parquet").to_pylist()
    images = [Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB") for r in rows]
    texts, owner = [], []
    for index, row in enumerate(rows):
        for item in row["sets"]:
            texts.append(item["gt"].strip())
            owner.append(index)
    with torch.no_grad():
        sims = model(**tokenizer(texts, padding=True, return_tensors="pt"),
                     pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).logits_per_image
    for k in (1, 5, 10):
        top = sims.topk(min(k, len(texts)), dim=1).indices.tolist()
        i2t = pct(any(owner[t] == i for t in top[i]) for i in range(len(images)))
        top_images = sims.T.topk(min(k, len(images)), dim=1).indices.tolist()
        t2i = pct(owner[t] in top_images[t] for t in range(len(texts)))
        assert result["subsets"]["v1"][f"i2t_recall@{k}"] == pytest.approx(i2t)
        assert result["subsets"]["v1"][f"t2i_recall@{k}"] == pytest.approx(t2i)
    assert result["subsets"]["v1"]["n"] == len(images) and result["subsets"]["v1"]["n_texts"] == len(texts)


def _rewrite(bench, tmp_path, edit):
    rows = pq.read_table(bench / "data" / "v1-00000-of-00001.parquet").to_pylist()
    edit(rows)
    path = tmp_path / "v1-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_a_set_with_three_negatives_is_named(tiny_clip_dir, bench, tmp_path):
    def drop(rows):
        rows[2]["sets"][0]["neg"] = rows[2]["sets"][0]["neg"][:3]
    with pytest.raises(ValueError, match=r"^v1-00000-of-00001\.parquet row 2 \(id v1-2\) set 0: neg should hold 4 non-empty captions, got 3$"):
        evaluate_encoder(tiny_clip_dir, "rclip_bench", _rewrite(bench, tmp_path, drop), None)


def test_undecodable_image_bytes_are_named(tiny_clip_dir, bench, tmp_path):
    def corrupt(rows):
        rows[1]["image"]["bytes"] = b"\x89PNG not really"
    with pytest.raises(ValueError, match=r"v1-00000-of-00001\.parquet row 1 \(id v1-1\): cannot decode the embedded image bytes"):
        evaluate_encoder(tiny_clip_dir, "rclip_bench", _rewrite(bench, tmp_path, corrupt), None)


def test_parquet_of_another_benchmark_is_refused_in_one_line(tiny_clip_dir, tmp_path):
    # e.g. the lmms-lab POPE parquet, or the pre-release layout (image_path, category, options, answer)
    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([{"question_id": "1", "question": "is there a dog?", "answer": "yes", "category": "random",
                                          "image": {"bytes": png_bytes(0), "path": "a.png"}}]), path)
    with pytest.raises(ValueError, match=r"not an RCLIP-Bench parquet \(expected columns id, image_name, text, version, sets, image; found") as error:
        evaluate_encoder(tiny_clip_dir, "rclip_bench", path, None)
    assert "\n" not in str(error.value)


def test_synthetic_writer_output_is_read_by_the_benchmark(tiny_clip_dir, tmp_path):
    from reasonclip_llava.data import generate_synthetic

    paths = generate_synthetic(tmp_path / "synth", num_images=10, seed=1)
    result = evaluate_encoder(tiny_clip_dir, "rclip_bench", paths["rclip_bench"], None)
    table = pq.read_table(paths["rclip_bench"]).to_pylist()
    assert list(result["subsets"]) == ["v1"]
    assert result["n_items"] == sum(len(row["sets"]) for row in table)
    assert set(result["tags"]["v1"]) <= set("SAHTP")


# ---- the text-encoding rule (encoder/text.py) ------------------------------------------------------


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
    """Case-sensitive like SigLIP's own (SentencePiece) tokenizers, unlike CLIP's BPE which lowercases itself."""
    from reasonclip_llava.testing.tiny_t5 import build_tiny_t5_tokenizer

    return build_tiny_t5_tokenizer(tmp_path_factory.mktemp("spm"))


def test_text_rule_per_family(sentencepiece_tokenizer):
    from transformers import CLIPConfig, SiglipConfig

    from reasonclip_llava.encoder.text import TextRule, tokenize

    assert TextRule.for_model(CLIPConfig()) == TextRule(77, "longest", False)
    siglip = SiglipConfig(text_config={"max_position_embeddings": 64})
    assert TextRule.for_model(siglip) == TextRule(64, "max_length", False)
    siglip.text_config.max_position_embeddings = 16  # a tower with fewer positions truncates earlier
    assert TextRule.for_model(siglip).max_length == 16
    siglip2 = SiglipConfig(text_config={"max_position_embeddings": 64})
    siglip2._name_or_path = "google/siglip2-so400m-patch14-384"
    rule = TextRule.for_model(siglip2)
    assert rule == TextRule(64, "max_length", True)
    batch = tokenize(sentencepiece_tokenizer, ["The Red Circle", "a square"], rule)
    assert batch["input_ids"].shape == (2, 64) and 0 < batch["attention_mask"][1].sum() < 64
    lower = sentencepiece_tokenizer(["the red circle"], padding="max_length", max_length=64, return_tensors="pt")
    assert batch["input_ids"][0].tolist() == lower["input_ids"][0].tolist()
    plain = tokenize(sentencepiece_tokenizer, ["The Red Circle", "a square"], TextRule.for_model(siglip))
    assert plain["input_ids"][0].tolist() != lower["input_ids"][0].tolist()  # SigLIP 1 keeps the case
    longest = tokenize(sentencepiece_tokenizer, ["The Red Circle", "a square"], TextRule(77, "longest", False))
    assert longest["input_ids"].shape[1] < 64


def _pooled(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def test_siglip_embedder_pads_to_64_with_mask_and_lowercases_siglip2(sentencepiece_tokenizer):
    from transformers import SiglipConfig, SiglipModel

    tokenizer = sentencepiece_tokenizer
    config = SiglipConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                           vocab_size=len(tokenizer), max_position_embeddings=64),
                          vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                             image_size=32, patch_size=16))
    torch.manual_seed(0)
    model = SiglipModel(config).eval()
    texts = ["The Red Circle", "a small square " * 30]
    for name, lowercase in (("tiny-siglip", False), ("tiny-siglip2", True)):
        model.config._name_or_path = name
        shown = [t.lower() for t in texts] if lowercase else texts
        inputs = tokenizer(shown, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            expected = torch.nn.functional.normalize(_pooled(model.get_text_features(**inputs)), dim=-1)
        embedder = EncoderEmbedder(model, image_processor=None, tokenizer=tokenizer, name=name)
        assert embedder.text_rule.lowercase is lowercase
        assert torch.allclose(embedder.embed_texts(texts), expected, atol=1e-5), name
        alone = EncoderEmbedder(model, image_processor=None, tokenizer=tokenizer, name=name)
        assert torch.allclose(alone.embed_texts(texts[:1]), expected[:1], atol=1e-5)  # independent of its batch


def test_synthetic_rclip_bench_loads_as_an_hf_dataset_with_an_image_feature(tmp_path):
    datasets = pytest.importorskip("datasets")  # in the test extra
    from reasonclip_llava.data import generate_synthetic

    path = generate_synthetic(tmp_path / "synth", num_images=6, seed=0)["rclip_bench"]
    dataset = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert isinstance(dataset.features["image"], datasets.Image)
    row = dataset[0]
    assert isinstance(row["image"], Image.Image) and len(row["sets"][0]["neg"]) == 4
