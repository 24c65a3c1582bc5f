"""Learning test: from one random-init tiny CLIP, training with hard negatives (NegCLIP form, the swap of
the caption's two noun phrases) vs plain contrastive training, on held-out image swap accuracy.

The data are the package's synthetic scenes (`make_item`) in a `SceneSpace` of 24 colours, three large
filled shapes and left/right relations, at 32 px. Each training image has one caption naming both
objects in one of two word orders, "a red circle left of a blue square" (left object first) or "a blue
square right of a red circle" (right object first), and its hard negative swaps the two noun phrases in
the same order ("a blue square left of a red circle"): the same bag of words, false for the image.
Training captions put the left object first in 85% of images, as people tend to describe a scene left
to right; held-out images are scored in both orders, so word order alone ("the first object is on the
left") gives 50%, as does a bag-of-words text encoder (the negative has the caption's exact tokens).

Why plain contrastive stays at 50% here: with 24 colours x 3 shapes, two captions in a batch of 32
almost never share an object, so the batch is told apart by its bag of words within a few hundred steps
and the loss, saturated, no longer asks which object is where. A hard negative keeps the bag-identical
swap in every image's softmax: its loss stays at ln 2 until the towers bind objects to positions.
docs/LEARNING_STUDY.md has the settings where this does not hold (fewer colours: captions in a batch
share objects in other roles, and plain training learns the binding too).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from pretrain_helpers import learnable_tiny_clip, recipe, single_thread, swap_pair_embeddings
from reasonclip_llava.data.hard_negatives import stable_seed
from reasonclip_llava.data.synthetic import COLOURS, Scene, SceneSpace, _a, make_item
from reasonclip_llava.pretrain.trainer import pretrain_from_yaml

SPACE = SceneSpace(colours=tuple(COLOURS), sizes=("large",), fills=("filled",), relations=("left of", "right of"))
NUM_TRAIN, NUM_EVAL, LEFT_FIRST = 10_000, 500, 0.85
STEPS, BATCH, LR = 3000, 32, "2e-3"


def relation_forms(scene: Scene) -> dict[str, tuple[str, str]]:
    """{word order: (caption, noun-phrase swap)} for a left/right scene."""
    left, right, _, _ = scene.canonical()  # canonical() lists the left object first
    left, right = left.name, right.name
    return {
        "left first": (f"{_a(left)} left of {_a(right)}", f"{_a(right)} left of {_a(left)}"),
        "right first": (f"{_a(right)} right of {_a(left)}", f"{_a(left)} right of {_a(right)}"),
    }


def write_relation_data(root: Path) -> tuple[Path, Path]:
    """Train rows {image_path, captions: [caption], negatives: [swap]}; eval rows in both word orders."""
    (root / "images").mkdir(parents=True)
    train, held_out = [], []
    for index in range(NUM_TRAIN + NUM_EVAL):
        item = make_item(0, index, image_size=32, space=SPACE)
        image_path = f"images/{index:06d}.png"
        item.image.save(root / image_path)
        forms = relation_forms(item.scene)
        if index < NUM_TRAIN:
            order = "left first" if random.Random(stable_seed("word order", index)).random() < LEFT_FIRST else "right first"
            caption, negative = forms[order]
            train.append({"image_path": image_path, "captions": [caption], "negatives": [negative]})
        else:
            held_out += [{"image_path": image_path, "order": order, "caption": caption, "negative": negative}
                         for order, (caption, negative) in forms.items()]
    pq.write_table(pa.Table.from_pylist(train), root / "train.parquet")
    pq.write_table(pa.Table.from_pylist(held_out), root / "eval.parquet")
    return root / "train.parquet", root / "eval.parquet"


def swap_accuracy(checkpoint: Path, eval_rows: list[dict], image_root: Path) -> dict[str, float]:
    """Share of held-out (image, order) pairs with sim(image, caption) > sim(image, swap), per word order."""
    images, captions, negatives = swap_pair_embeddings(checkpoint, [image_root / r["image_path"] for r in eval_rows],
                                                       [r["caption"] for r in eval_rows], [r["negative"] for r in eval_rows])
    correct = (images * captions).sum(-1) > (images * negatives).sum(-1)
    orders = [r["order"] for r in eval_rows]
    accuracy = {order: correct[[o == order for o in orders]].float().mean().item() for order in dict.fromkeys(orders)}
    accuracy["both orders"] = correct.float().mean().item()
    return accuracy


@pytest.mark.slow
def test_hard_negatives_teach_the_image_tower_which_object_is_where(tmp_path):
    train, held_out = write_relation_data(tmp_path / "data")
    eval_rows = pq.read_table(held_out).to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(learnable_tiny_clip(tmp_path / "clip", text_layers=4, logit_scale=50.0))
    # The swap is invisible to a bag of words: same tokens, other order.
    assert all(sorted(tokenizer.tokenize(r["caption"])) == sorted(tokenizer.tokenize(r["negative"])) for r in eval_rows)

    common = [f"--model.name_or_path={tmp_path / 'clip'}", f"--data.train={train}", "--data.caption_columns=captions",
              f"--data.batch_size={BATCH}", f"--schedule.max_steps={STEPS}", "--schedule.warmup_steps=50", f"--optim.lr={LR}",
              "--optim.lr_logit_scale=1e-2", "--optim.weight_decay=0", "--runtime.save_every=0", "--runtime.report_to=",
              "--stage.name=stage0"]
    accuracy, seconds = {}, {}
    with single_thread():
        for name, k in (("plain", 0), ("hard negatives", 1)):
            start = time.perf_counter()
            out = pretrain_from_yaml(recipe("stage0"), [*common, f"--stage.hard_negatives={k}", f"--runtime.output_dir={tmp_path / str(k)}"])
            seconds[name] = time.perf_counter() - start
            accuracy[name] = swap_accuracy(out, eval_rows, tmp_path / "data")
    for name, scores in accuracy.items():
        print(f"{name:14s} ({seconds[name]:.0f} s): image swap accuracy "
              + ", ".join(f"{order} {value:.1%}" for order, value in scores.items()) + " (bag of words: 50%)")
    plain, hard = accuracy["plain"]["both orders"], accuracy["hard negatives"]["both orders"]
    assert hard > 0.8 and hard > plain + 0.2, f"hard negatives {hard:.1%} vs plain {plain:.1%}"
