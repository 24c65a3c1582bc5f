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


def test_relation_options_of_bench_agree_with_pixels(synth):
    """In S items of the form '<a> is <rel> <b>, so ...', the pixels confirm the answer and refute every
    option that names the image's two real objects."""
    checked = 0
    for row in pq.read_table(synth["rclip_bench"]).to_pylist():
        image = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
        for item in row["sets"]:
            gt, *negatives = (o.split(",")[0] for o in [item["gt"], *item["neg"]])
            real = _head_objects(gt)
            if item["tag"] != "S" or real is None:
                continue
            assert _relation_holds(image, gt)
            for head in negatives:
                if _head_objects(head) == real:
                    assert not _relation_holds(image, head), head
                    checked += 1
    assert checked > 0


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
