"""Synthetic compositional data: determinism, published schemas, and captions that agree with the pixels."""

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from reasonclip_llava.data import CATEGORIES, generate_synthetic
from reasonclip_llava.data.synthetic import COLOURS, PALETTE, SHAPES, SWAP_TYPES, SceneSpace, make_item, relation_caption

NUM_IMAGES = 40


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=NUM_IMAGES, seed=3, write_jsonl=True)


def _tables(paths):
    return {k: pq.read_table(paths[k]) for k in ("reasonlite", "reasonpro", "swap_eval", "rclip_bench")}


def test_same_seed_same_files_other_seed_other_files(synth, tmp_path):
    again = generate_synthetic(tmp_path / "again", num_images=NUM_IMAGES, seed=3)
    other = generate_synthetic(tmp_path / "other", num_images=NUM_IMAGES, seed=4)
    for key, table in _tables(synth).items():
        assert table.equals(pq.read_table(again[key])), key
    assert not _tables(synth)["reasonlite"].equals(pq.read_table(other["reasonlite"]))
    first = sorted(Path(synth["images"]).iterdir())
    assert len(first) == NUM_IMAGES
    assert all(p.read_bytes() == (again["images"] / p.name).read_bytes() for p in first)
    assert any(p.read_bytes() != (other["images"] / p.name).read_bytes() for p in first)


def test_image_depends_only_on_seed_and_index(synth, tmp_path):
    bigger = generate_synthetic(tmp_path / "bigger", num_images=NUM_IMAGES + 10, seed=3)
    for name in ("000000.png", "000017.png"):
        assert (synth["images"] / name).read_bytes() == (bigger["images"] / name).read_bytes()


def test_reasonlite_schema(synth):
    # The published ReasonLite-42M schema and chunk name (METHOD.md).
    assert synth["reasonlite"].name == "cc12m_tb_trl_chunk_00.parquet"
    table = pq.read_table(synth["reasonlite"])
    assert table.schema.names == ["id", "image_path", "tb", "trl"]
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("image_path").type == pa.string()
    assert table.schema.field("tb").type == pa.list_(pa.string())
    assert table.schema.field("trl").type == pa.list_(pa.string())
    assert table.num_rows == NUM_IMAGES - round(0.2 * NUM_IMAGES)
    for row in table.to_pylist():
        assert len(row["tb"]) == 3 and len(row["trl"]) == 3
        assert len(set(row["trl"])) == 3
        assert all(0 < len(c.split()) <= 30 for c in row["tb"] + row["trl"])
        image = Image.open(Path(synth["root"]) / row["image_path"])
        assert image.size == (64, 64) and image.mode == "RGB"


def test_reasonpro_schema_and_categories(synth):
    # The published ReasonPro-16M schema (METHOD.md): trp_cls one letter, trp_cls_ls the image's 3 letters.
    assert synth["reasonpro"].name == "cc12m_trp_chunk_00.parquet"
    table = pq.read_table(synth["reasonpro"])
    assert table.schema.names == ["image_path", "trp", "trp_cls", "trp_cls_ls"]
    assert table.schema.field("trp").type == pa.string()
    assert table.schema.field("trp_cls").type == pa.string()
    assert table.schema.field("trp_cls_ls").type == pa.list_(pa.string())
    seen = Counter()
    for row in table.to_pylist():
        assert row["trp_cls"] in CATEGORIES and len(row["trp_cls_ls"]) == 3 and set(row["trp_cls_ls"]) <= set(CATEGORIES)
        assert row["trp_cls"] in row["trp_cls_ls"]  # the caption is about one of the image's categories
        assert len(row["trp"].split()) <= 30
        seen[row["trp_cls"]] += 1
    assert set(seen) == set(CATEGORIES)  # every category is realised


def test_cc12m_refined_schema(synth):
    # The published CC12M-Refined schema: image_path and the 3 descriptive captions, ReasonLite's tb.
    assert synth["cc12m_refined"].name == "cc12m_tb_chunk_00.parquet"
    table = pq.read_table(synth["cc12m_refined"])
    assert table.schema.names == ["image_path", "tb"]
    lite = pq.read_table(synth["reasonlite"])
    assert table.column("tb").to_pylist() == lite.column("tb").to_pylist()


def test_jsonl_copies_match_parquet(synth):
    import json

    rows = [json.loads(line) for line in Path(synth["reasonpro_jsonl"]).read_text().splitlines()]
    assert rows == pq.read_table(synth["reasonpro"]).to_pylist()


def test_eval_images_are_held_out(synth):
    train = set(pq.read_table(synth["reasonlite"]).column("image_path").to_pylist())
    held_out = set(pq.read_table(synth["swap_eval"]).column("image_path").to_pylist())
    assert held_out and not held_out & train
    bench = {f"images/{name}" for name in pq.read_table(synth["rclip_bench"]).column("image_name").to_pylist()}
    assert bench == held_out


def test_swap_negatives_are_bag_of_words_identical(synth):
    rows = pq.read_table(synth["swap_eval"]).to_pylist()
    assert Counter(r["swap_type"] for r in rows) == {t: round(0.2 * NUM_IMAGES) for t in SWAP_TYPES}
    for row in rows:
        assert row["negative_caption"] != row["caption"]
        assert Counter(row["negative_caption"].split()) == Counter(row["caption"].split())


def _colour_centre(image: np.ndarray, colour: str) -> np.ndarray:
    mask = np.all(image == np.array(COLOURS[colour]), axis=-1)  # exact colour: PNG is lossless
    assert mask.any(), colour
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _relation_holds(image: np.ndarray, caption: str) -> bool:
    """Check 'the <colour> <shape> is <relation> the <colour> <shape>' against the pixels."""
    words = caption.split()
    first, second = words[1], words[-2]
    relation = " ".join(words[4:-3])
    (x0, y0), (x1, y1) = _colour_centre(image, first), _colour_centre(image, second)
    return {"left of": x0 < x1, "right of": x0 > x1, "above": y0 < y1, "below": y0 > y1}[relation]


def test_swap_eval_captions_agree_with_pixels(synth):
    for row in pq.read_table(synth["swap_eval"]).to_pylist():
        image = np.asarray(Image.open(Path(synth["root"]) / row["image_path"]))
        assert _relation_holds(image, row["caption"])
        words = row["caption"].split()
        assert words[2] in SHAPES and words[-1] in SHAPES
        if row["swap_type"] in ("swap_att", "swap_rel"):  # colours trade places: the pixels refute it
            assert not _relation_holds(image, row["negative_caption"])


def test_rclip_bench_is_the_released_format(synth):
    """METHOD.md's schema: rows = images, sets list<struct<tag, gt, neg[4]>>, image struct<bytes, path>."""
    table = pq.read_table(synth["rclip_bench"])
    assert table.schema.names == ["id", "image_name", "text", "version", "sets", "image"]
    assert table.schema.field("sets").type == pa.list_(pa.struct([("tag", pa.string()), ("gt", pa.string()),
                                                                 ("neg", pa.list_(pa.string()))]))
    assert table.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["image"] == {"_type": "Image"}
    rows = table.to_pylist()
    assert {s["tag"] for r in rows for s in r["sets"]} == set(CATEGORIES)
    for row in rows:
        assert row["version"] == "v1" and row["image"]["path"] == row["image_name"]
        assert row["image"]["bytes"] == (Path(synth["images"]) / row["image_name"]).read_bytes()
        for item in row["sets"]:
            assert len(item["neg"]) == 4 and len({item["gt"], *item["neg"]}) == 5


def _head_objects(head: str) -> set[tuple[str, str]] | None:
    """{(colour, shape)} named by 'the <c> <s> is <relation> the <c> <s>', or None for other sentences."""
    words = head.split()
    if len(words) not in (7, 8) or words[0] != "the" or words[3] != "is" or words[-3] != "the":
        return None
    return {(words[1], words[2]), (words[-2], words[-1])}


def test_relation_options_of_bench_agree_with_pixels():
    """In S items of the form '<a> is <rel> <b>, so ...', the pixels confirm the answer and refute every
    option that names the image's two real objects."""
    import random

    from reasonclip_llava.data.synthetic import rclip_items

    checked = 0
    for index in range(300):
        item = make_item(3, index, image_size=64)
        image = np.asarray(item.image)
        for row in rclip_items(item.scene, ["S"], random.Random(index)):
            heads = [o.split(",")[0] for o in row["options"]]
            real = _head_objects(heads[row["answer"]])
            if real is None:
                continue
            assert _relation_holds(image, heads[row["answer"]])
            for i, head in enumerate(heads):
                if i != row["answer"] and _head_objects(head) == real:
                    assert not _relation_holds(image, head), head
                    checked += 1
    assert checked > 5


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="num_images"):
        generate_synthetic(tmp_path, num_images=1)
    with pytest.raises(ValueError, match="eval_fraction"):
        generate_synthetic(tmp_path, num_images=10, eval_fraction=1.5)


def test_scene_space_narrows_and_widens_what_scenes_hold():
    space = SceneSpace(colours=tuple(COLOURS), sizes=("large",), fills=("filled",), relations=("left of", "right of"))
    scenes = [make_item(0, index, image_size=32, space=space) for index in range(300)]
    objects = [o for item in scenes for o in item.scene.objects]
    assert {o.size for o in objects} == {"large"} and {o.fill for o in objects} == {"filled"}
    assert {item.scene.relation for item in scenes} == {"left of", "right of"}
    assert len({o.colour for o in objects} - set(PALETTE)) > 10  # colours beyond the default six are drawn
    for item in scenes[:50]:  # ... in their own RGB, where the caption says
        assert _relation_holds(np.asarray(item.image), relation_caption(item.scene))
    assert all(item.scene.objects[0].colour in PALETTE for item in (make_item(0, i, 32) for i in range(50)))


@pytest.mark.parametrize("field, value, message", [
    ("colours", ("red", "mauve"), "SceneSpace.colours: ['mauve']"),
    ("relations", (), "SceneSpace.relations: empty"),
    ("shapes", ("circle",), "SceneSpace.shapes needs at least 2"),
])
def test_scene_space_names_a_bad_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SceneSpace(**{field: value})


# ---- RCLIP-Bench options carry no text-only prior ---------------------------------------------------

def _bench_items(num_images: int = 800) -> list[dict]:
    import random

    from reasonclip_llava.data.hard_negatives import stable_seed
    from reasonclip_llava.data.synthetic import rclip_items

    items = []
    for index in range(num_images):
        scene = make_item(0, index, image_size=32).scene
        items += rclip_items(scene, list(scene.categories()), random.Random(stable_seed("prior test", index)))
    return items


def _expected_accuracy(items: list[dict], score) -> float:
    """Accuracy of picking the highest-scoring option, ties shared (the expectation over random tie-breaks)."""
    total = 0.0
    for item in items:
        values = [score(option, item["options"]) for option in item["options"]]
        best = [k for k, v in enumerate(values) if v == max(values)]
        total += (item["answer"] in best) / len(best)
    return total / len(items)


def _shared_words(option: str, options: list[str]) -> int:
    words = set(option.split())
    return sum(len(words & set(other.split())) for other in options if other is not option)


def test_rclip_bench_options_give_a_scorer_without_the_image_chance():
    """5-way items built around the true caption (each negative one change away from it) give it away:
    the option sharing most words with the others is the answer. Options drawn alike from one grid of
    scenes leave every image-blind rule at chance, 20% (+-2.1 points = 3 standard errors at n ~ 3,300)."""
    items = _bench_items()
    assert len(items) > 3000 and {i["category"] for i in items} == set(CATEGORIES)
    rules = {
        "most words shared with the other options": _shared_words,
        "fewest words shared": lambda o, opts: -_shared_words(o, opts),
        "longest": lambda o, opts: len(o),
        "shortest": lambda o, opts: -len(o),
    }
    for name, rule in rules.items():
        accuracy = _expected_accuracy(items, rule)
        print(f"{name}: {accuracy:.3f}")
        assert abs(accuracy - 0.2) < 0.021, (name, accuracy)
    for category in CATEGORIES:  # no category leans either way by much (n ~ 400-1000 each)
        accuracy = _expected_accuracy([i for i in items if i["category"] == category], _shared_words)
        assert abs(accuracy - 0.2) < 0.05, (category, accuracy)


def test_rclip_bench_is_at_chance_for_a_random_tiny_clip_on_a_blank_image(tmp_path):
    """The demo's base model (a random tiny CLIP) scored 2-9% on RCLIP-Bench: its text embeddings are a
    fixed projection, whose maximum over five options avoids the options' centre. With a blank image, a
    plain CLIPModel must now pick the answer 1 time in 5."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from reasonclip_llava.testing.tiny import save_tiny_clip

    items = _bench_items(300)
    for seed in (0,):
        model_dir = save_tiny_clip(tmp_path / f"clip{seed}", seed=seed)
        model, processor = CLIPModel.from_pretrained(model_dir).eval(), CLIPProcessor.from_pretrained(model_dir)
        with torch.no_grad():
            pixels = processor(images=[Image.new("RGB", (32, 32), (255, 255, 255))], return_tensors="pt")["pixel_values"]
            image = model.get_image_features(pixel_values=pixels)
            texts = processor(text=[o for i in items for o in i["options"]], padding=True, return_tensors="pt")
            options = model.get_text_features(**texts)
        image, options = (getattr(x, "pooler_output", x) for x in (image, options))  # transformers 5: an output object
        scores = torch.nn.functional.normalize(options, dim=-1) @ torch.nn.functional.normalize(image, dim=-1)[0]
        chosen = scores.view(len(items), 5).argmax(dim=1)
        accuracy = (chosen == torch.tensor([i["answer"] for i in items])).float().mean().item()
        print(f"random tiny CLIP seed {seed}, blank image: {accuracy:.3f} over {len(items)} items")
        assert abs(accuracy - 0.2) < 0.035, accuracy  # 3 standard errors at n ~ 1,200
