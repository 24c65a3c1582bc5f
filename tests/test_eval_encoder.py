"""Encoder benchmarks on tiny fixtures in each released format, checked against the model's own forward.

The reference for every item is CLIPModel(...).logits_per_image on that item's image and texts (one
forward per item, separate tokenisation and preprocessing), so a bug in batching, caching, alignment
of rows or in a decision rule shows up as a different number.
"""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reasonclip_llava.evaluation.encoder import EncoderEmbedder, compositional, evaluate_encoder

FIXTURES = Path(__file__).parent / "fixtures" / "encoder"
IMAGES = FIXTURES / "images"


@pytest.fixture(scope="module")
def reference(tiny_clip_dir):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    return model, AutoImageProcessor.from_pretrained(tiny_clip_dir), AutoTokenizer.from_pretrained(tiny_clip_dir)


@pytest.fixture(scope="module")
def embedder(tiny_clip_dir):
    return EncoderEmbedder.from_pretrained(tiny_clip_dir, batch_size=4)


def item_logits(reference, image: Image.Image, texts: list[str]) -> list[float]:
    """Similarity of one image with each text from a plain CLIPModel forward."""
    model, processor, tokenizer = reference
    text_inputs = tokenizer(texts, padding=True, return_tensors="pt")
    pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(**text_inputs, pixel_values=pixel_values).logits_per_image[0].tolist()


def text_features(reference, texts: list[str]) -> torch.Tensor:
    model, _, tokenizer = reference
    with torch.no_grad():
        pooled = model.text_model(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output
        return F.normalize(model.text_projection(pooled), dim=-1)


def rgb(path: Path, box=None) -> Image.Image:
    image = Image.open(path).convert("RGB")
    return image.crop((box[0], box[1], box[0] + box[2], box[1] + box[3])) if box else image


def pct(flags: list[bool]) -> float:
    return 100.0 * sum(flags) / len(flags)


def run(embedder, tiny_clip_dir, benchmark, data, images, **kwargs) -> dict:
    return evaluate_encoder(tiny_clip_dir, benchmark, data, images, embedder=embedder, **kwargs)


# ---- SugarCrepe -------------------------------------------------------------------------------------


def test_sugarcrepe_matches_reference_and_keeps_every_subset(embedder, reference, tiny_clip_dir, tmp_path):
    result = run(embedder, tiny_clip_dir, "sugarcrepe", FIXTURES / "sugarcrepe", IMAGES / "val2017", out_dir=tmp_path)
    expected, all_flags = {}, []
    for name in compositional.SUGARCREPE_SUBSETS:
        items = json.loads((FIXTURES / "sugarcrepe" / f"{name}.json").read_text()).values()
        flags = []
        for item in items:
            pos, neg = item_logits(reference, rgb(IMAGES / "val2017" / item["filename"]), [item["caption"], item["negative_caption"]])
            flags.append(pos > neg)
        expected[name] = pct(flags)
        all_flags += flags
    assert list(result["subsets"]) == list(compositional.SUGARCREPE_SUBSETS)  # all 7 kept, none overwritten
    assert {name: s["accuracy"] for name, s in result["subsets"].items()} == pytest.approx(expected)
    assert result["micro"]["accuracy"] == pytest.approx(pct(all_flags))
    assert result["macro"]["accuracy"] == pytest.approx(sum(expected.values()) / 7)
    assert result["headline"]["SugarCrepe"] == pytest.approx(result["macro"]["accuracy"])
    assert result["n_items"] == len(all_flags)
    assert len(set(expected.values())) > 1, "fixture should give different subset accuracies"
    # One JSON per run that reloads with the same numbers.
    saved = json.loads((tmp_path / "sugarcrepe.json").read_text())
    assert saved["benchmark"] == "sugarcrepe" and saved["model"] == Path(tiny_clip_dir).name and saved["timestamp"]
    assert saved["subsets"] == result["subsets"] and saved["micro"] == result["micro"]
    # Per-item decisions next to it, one line per item, agreeing with the subset numbers.
    items = [json.loads(line) for line in Path(saved["items_path"]).read_text().splitlines()]
    assert len(items) == result["n_items"]
    for name in compositional.SUGARCREPE_SUBSETS:
        flags = [item["correct"] for item in items if item["subset"] == name]
        assert pct(flags) == pytest.approx(expected[name])
    assert all(item["correct"] == (item["scores"][0] > item["scores"][1]) for item in items)


# ---- SugarCrepe++ -----------------------------------------------------------------------------------


def test_sugarcrepe_pp_itt_and_tot_conditions(embedder, reference, tiny_clip_dir):
    result = run(embedder, tiny_clip_dir, "sugarcrepe++", FIXTURES / "sugarcrepe_pp", IMAGES / "val2017")
    for name in compositional.SUGARCREPE_PP_SUBSETS:
        itt, tot = [], []
        for item in json.loads((FIXTURES / "sugarcrepe_pp" / f"{name}.json").read_text()):
            texts = [item["caption"], item["caption2"], item["negative_caption"]]
            i_p1, i_p2, i_n = item_logits(reference, rgb(IMAGES / "val2017" / item["filename"]), texts)
            itt.append(i_p1 > i_n and i_p2 > i_n)
            p1, p2, n = text_features(reference, texts)
            tot.append(bool(p1 @ p2 > p1 @ n and p1 @ p2 > p2 @ n))
        assert result["subsets"][name]["itt"] == pytest.approx(pct(itt))
        assert result["subsets"][name]["tot"] == pytest.approx(pct(tot))
    assert result["headline"]["SugarCrepe++ ITT"] == pytest.approx(result["macro"]["itt"])
    assert result["headline"]["SugarCrepe++ TOT"] == pytest.approx(result["macro"]["tot"])


# ---- WhatsUp ----------------------------------------------------------------------------------------


def test_whatsup_first_option_correct_macro_over_subsets(embedder, reference, tiny_clip_dir):
    result = run(embedder, tiny_clip_dir, "whatsup", FIXTURES / "whatsup", IMAGES)
    expected, read_groups = {}, {}
    for name, file_name in compositional.WHATSUP_FILES.items():
        flags = read_groups.setdefault(file_name[:4] if file_name[:4] in ("coco", "vg_q") else "controlled", [])
        start = len(flags)
        for row in json.loads((FIXTURES / "whatsup" / file_name).read_text()):
            if isinstance(row, dict):
                path, options = IMAGES / Path(row["image_path"]).relative_to("data"), row["caption_options"]
            elif name.startswith("coco"):
                path, options = IMAGES / "val2017" / f"{row[0]:012d}.jpg", row[1:]
            else:
                path, options = IMAGES / "vg_images" / f"{row[0]}.jpg", row[1:]
            logits = item_logits(reference, rgb(path), options)
            flags.append(logits.index(max(logits)) == 0)
        expected[name] = pct(flags[start:])
    assert {name: s["accuracy"] for name, s in result["subsets"].items()} == pytest.approx(expected)
    assert result["headline"]["WhatsUp"] == pytest.approx(sum(expected.values()) / len(expected))
    # READ's number (src/runners/evaluator.py): items grouped by file prefix coco* / vg* / the rest, mean of 3 groups
    assert len(read_groups) == 3
    assert result["headline"]["WhatsUp (READ, 3 groups)"] == pytest.approx(sum(pct(f) for f in read_groups.values()) / 3)
    assert result["aggregation"]["WhatsUp"].startswith("macro") and "READ" in result["aggregation"]["WhatsUp (READ, 3 groups)"]


# ---- VALSE ------------------------------------------------------------------------------------------


def test_valse_drops_items_with_fewer_than_two_votes(embedder, reference, tiny_clip_dir):
    result = run(embedder, tiny_clip_dir, "valse", FIXTURES / "valse", IMAGES / "val2017")
    all_items = []
    for piece in ("existence", "counting-hard"):
        rows = json.loads((FIXTURES / "valse" / f"{piece}.json").read_text()).values()
        kept = [row for row in rows if row["mturk"]["caption"] >= 2]
        flags = []
        for row in kept:
            caption, foil = item_logits(reference, rgb(IMAGES / "val2017" / row["image_file"]), [row["caption"], row["foil"]])
            flags.append(caption > foil)
            all_items.append(caption >= foil)  # READ: argmax == 0, a tie counts for the caption
        subset = result["subsets"][piece]
        assert (subset["n"], subset["n_dropped"]) == (len(kept), len(rows) - len(kept))
        assert subset["accuracy"] == pytest.approx(pct(flags))
    assert result["n_dropped"] == 2
    assert result["headline"]["VALSE (READ, micro)"] == pytest.approx(pct(all_items))  # micro over all items
    assert result["headline"]["VALSE"] == pytest.approx(result["macro"]["accuracy"])


# ---- CREPE ------------------------------------------------------------------------------------------


def test_crepe_recall_at_k_on_cropped_images(embedder, reference, tiny_clip_dir):
    result = run(embedder, tiny_clip_dir, "crepe", FIXTURES / "crepe", IMAGES / "vg_images")
    for path in sorted((FIXTURES / "crepe").rglob("*.csv")):
        ranks = []
        for row in csv.DictReader(path.open()):
            box = [float(row[key]) for key in ("x", "y", "width", "height")]
            logits = item_logits(reference, rgb(IMAGES / "vg_images" / f"{row['image_id']}.jpg", box),
                                 [row["caption"], *ast.literal_eval(row["hard_negs"])])
            ranks.append(sorted(logits, reverse=True).index(logits[0]))
        subset = result["subsets"][path.relative_to(FIXTURES / "crepe").with_suffix("").as_posix()]
        for k in (1, 3, 5, 10):
            assert subset[f"recall@{k}"] == pytest.approx(pct([rank < k for rank in ranks]))


def test_crepe_crop_changes_the_embedding(embedder):
    from reasonclip_llava.evaluation.encoder import ImageRef

    path = (IMAGES / "vg_images" / "2315001.jpg").resolve()
    full, cropped = embedder.embed_images([ImageRef(path), ImageRef(path, (4, 2, 30, 28))])
    assert not torch.allclose(full, cropped)


# ---- Winoground -------------------------------------------------------------------------------------


def test_winoground_text_image_group_definitions(embedder, reference, tiny_clip_dir):
    result = run(embedder, tiny_clip_dir, "winoground", FIXTURES / "winoground", IMAGES / "winoground")
    rows = [json.loads(line) for line in (FIXTURES / "winoground" / "examples.jsonl").read_text().splitlines()]
    text, image = [], []
    for row in rows:
        captions = [row["caption_0"], row["caption_1"]]
        (c0_i0, c1_i0), (c0_i1, c1_i1) = (item_logits(reference, rgb(IMAGES / "winoground" / f"{row[k]}.png"), captions)
                                          for k in ("image_0", "image_1"))
        text.append(c0_i0 > c1_i0 and c1_i1 > c0_i1)
        image.append(c0_i0 > c0_i1 and c1_i1 > c1_i0)
    group = [t and i for t, i in zip(text, image)]
    assert result["headline"] == pytest.approx({"Winoground text": pct(text), "Winoground image": pct(image),
                                                "Winoground group": pct(group)})
    assert set(result["subsets"]) == {"Object", "Relation"}


# ---- ARO --------------------------------------------------------------------------------------------


def test_aro_strict_true_over_false_and_macro_over_groups(embedder, reference, tiny_clip_dir, monkeypatch):
    monkeypatch.setattr(compositional, "ARO_MIN_ATTRIBUTE_COUNT", 1)
    result = run(embedder, tiny_clip_dir, "aro", FIXTURES / "aro", IMAGES / "vg_images")
    for name, file_name in compositional.ARO_FILES.items():
        groups: dict[str, list[bool]] = {}
        for row in json.loads((FIXTURES / "aro" / file_name).read_text()):
            box = [row[key] for key in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")]
            true, false = item_logits(reference, rgb(IMAGES / "vg_images" / row["image_path"], box), [row["true_caption"], row["false_caption"]])
            key = row.get("relation_name") or "_".join(row["attributes"])
            groups.setdefault(key, []).append(true > false)
        flat = [flag for flags in groups.values() for flag in flags]
        assert result["subsets"][name]["accuracy"] == pytest.approx(pct(flat))
        macro = sum(pct(flags) for flags in groups.values()) / len(groups)
        assert result["subsets"][name]["macro_accuracy"] == pytest.approx(macro)


def test_aro_attribution_macro_needs_25_items_per_pair(embedder, tiny_clip_dir):
    result = run(embedder, tiny_clip_dir, "aro", FIXTURES / "aro", IMAGES / "vg_images")
    subset = result["subsets"]["vg_attribution"]
    assert subset["macro_accuracy"] is None and subset["n_groups"] == 0
    assert result["headline"]["ARO VG-Attribution"] == subset["accuracy"]  # falls back to item accuracy


# ---- Retrieval --------------------------------------------------------------------------------------


def test_retrieval_recall_matches_brute_force(embedder, reference, tiny_clip_dir):
    data = FIXTURES / "retrieval" / "dataset_coco.json"
    result = run(embedder, tiny_clip_dir, "coco", data, IMAGES)
    entries = [e for e in json.loads(data.read_text())["images"] if e["split"] == "test"]
    texts, owner = [], []
    for index, entry in enumerate(entries):
        for sentence in entry["sentences"]:
            texts.append(sentence["raw"])
            owner.append(index)
    sims = [item_logits(reference, rgb(IMAGES / e["filepath"] / e["filename"]), texts) for e in entries]
    expected = {}
    for k in (1, 5, 10):
        hits = 0
        for i, row in enumerate(sims):  # image -> text: any of its captions in the top k
            order = sorted(range(len(texts)), key=lambda j: -row[j])
            hits += any(owner[j] == i for j in order[:k])
        expected[f"i2t_recall@{k}"] = 100.0 * hits / len(entries)
        hits = 0
        for j in range(len(texts)):  # text -> image: its image in the top k
            order = sorted(range(len(entries)), key=lambda i: -sims[i][j])
            hits += owner[j] in order[:k]
        expected[f"t2i_recall@{k}"] = 100.0 * hits / len(texts)
    subset = result["subsets"]["test"]
    assert {key: subset[key] for key in expected} == pytest.approx(expected)
    assert (subset["n"], subset["n_texts"]) == (len(entries), len(texts))  # the train image is excluded
    assert result["headline"]["COCO I2T R@1"] == pytest.approx(expected["i2t_recall@1"])


# ---- Zero-shot --------------------------------------------------------------------------------------


def test_zeroshot_top1_top5_with_template_ensemble(embedder, reference, tiny_clip_dir):
    config_path = FIXTURES / "zeroshot" / "classes.json"
    result = run(embedder, tiny_clip_dir, "zeroshot", config_path, IMAGES / "classes")
    config = json.loads(config_path.read_text())
    folders = sorted(config["classnames"])
    classes = F.normalize(torch.stack([text_features(reference, [t.format(config["classnames"][f]) for t in config["templates"]]).mean(0)
                                       for f in folders]), dim=-1)
    model, processor, _ = reference
    top1 = []
    for label, folder in enumerate(folders):
        for path in sorted((IMAGES / "classes" / folder).iterdir()):
            with torch.no_grad():
                image = F.normalize(model.get_image_features(**processor(images=[rgb(path)], return_tensors="pt")).pooler_output, dim=-1)
            top1.append(int((image @ classes.T).argmax()) == label)
    assert result["headline"]["toy top-1"] == pytest.approx(pct(top1))
    assert result["micro"]["top5"] == 100.0  # 3 classes: always in the top 5
    assert result["classnames"] == [config["classnames"][f] for f in folders]


def test_zeroshot_without_config_uses_folder_names(embedder, tiny_clip_dir):
    result = run(embedder, tiny_clip_dir, "zeroshot", None, IMAGES / "classes")
    assert result["classnames"] == ["blue circle", "green leaf", "red square"]
    assert result["templates"] == ["a photo of a {}."]
