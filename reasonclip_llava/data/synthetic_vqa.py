"""Synthetic visual-instruction data over the synthetic shape images, for the LLaVA-NeXT demo.

Scenes come from `synthetic.make_item(seed, index)`, so the questions describe exactly the images that
`generate_synthetic(out_dir, num_images, seed)` wrote (same train / held-out split). Written under
`out_dir`:

- ``llava_pretrain.json``  LLaVA LCS-558K style: "<image>" -> one descriptive caption (plain template)
- ``llava_instruct.json``  LLaVA conversations: 2 question/answer turns per image
- held-out images only, in the released formats the evaluators read:
  ``vqa_eval/gqa/testdev_balanced_questions.json`` + ``vqa_eval/gqa/images/{imageId}.jpg``: one question
  of every kind in `QUESTION_KINDS` per image (short answers; the kind is GQA's ``types.semantic``, so the
  scorer's per-question rows and its per-type breakdown carry it)
  ``vqa_eval/pope/coco_pope_random.json`` + ``vqa_eval/pope/val2014/`` (yes/no object presence)

What each kind needs (`KIND_NEEDS`): relation ("Is the red circle left of the blue square?") and
which_side ("Which shape is at the left?") the spatial relation; colour_of_shape / shape_of_colour bind an
attribute to its object; POPE's presence questions need neither (a bag of the image's objects answers them).
  ``encoder_eval/sugarcrepe/swap_{att,obj}.json`` + ``encoder_eval/images/`` (caption vs swap negative)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..evaluation.benchmarks import SHORT_ANSWER_PROMPT
from .hard_negatives import stable_seed
from .synthetic import PALETTE, SHAPES, OPPOSITE, Scene, make_item, relation_caption, swap_negatives

QUESTION_KINDS = ("colour_of_shape", "shape_of_colour", "relation", "which_side")
KIND_NEEDS = {"relation": "relation", "which_side": "relation", "colour_of_shape": "attribute binding",
              "shape_of_colour": "attribute binding", "random": "neither (presence, POPE)"}


def _side_word(relation: str) -> str:
    return {"left of": "left", "right of": "right", "above": "top", "below": "bottom"}[relation]


def question_answer(scene: Scene, kind: str, rng: random.Random) -> tuple[str, str]:
    """One question about `scene` and its single-word answer."""
    a, b = scene.objects
    target = rng.choice(scene.objects)
    if kind == "colour_of_shape":
        return f"What colour is the {target.shape}?", target.colour
    if kind == "shape_of_colour":
        return f"What shape is {target.colour}?", target.shape
    if kind == "relation":
        truthful = rng.random() < 0.5
        relation = scene.relation if truthful else OPPOSITE[scene.relation]
        return f"Is the {a.name} {relation} the {b.name}?", "yes" if truthful else "no"
    if kind == "which_side":
        return f"Which shape is at the {_side_word(scene.relation)}?", a.shape
    raise ValueError(f"unknown question kind '{kind}'")


def presence_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """POPE-style: is there a <colour> <shape> in the image? Half of them absent."""
    if rng.random() < 0.5:
        present = rng.choice(scene.objects)
        return f"Is there a {present.colour} {present.shape} in the image?", "yes"
    names = {o.name for o in scene.objects}
    absent = [f"{c} {s}" for c in PALETTE for s in SHAPES if f"{c} {s}" not in names]
    return f"Is there a {rng.choice(absent)} in the image?", "no"


def generate_synthetic_vqa(out_dir: str | Path, num_images: int, seed: int = 0, image_size: int = 64, eval_fraction: float = 0.2,
                           write_images: bool = False, num_eval: int | None = None) -> dict[str, Path]:
    """Write the instruction data and held-out benchmarks for the images of `generate_synthetic`.

    write_images: also write the training images ``images/{index}.png`` that are not there yet (more
    images than `generate_synthetic` wrote; the same pure function of (seed, index) draws them).
    num_eval: the number of held-out images (the last indices), instead of `eval_fraction`; held-out
    images are always written by this function, so more of them need no other files.
    """
    root = Path(out_dir)
    if num_eval is None:
        num_eval = round(num_images * eval_fraction)
    num_eval = min(num_images - 1, max(1, num_eval))
    num_train = num_images - num_eval
    pretrain, instruct, gqa, pope = [], [], {}, []
    sugarcrepe: dict[str, dict] = {"swap_att": {}, "swap_obj": {}}
    paths = {
        "pretrain": root / "llava_pretrain.json",
        "instruct": root / "llava_instruct.json",
        "gqa": root / "vqa_eval" / "gqa" / "testdev_balanced_questions.json",
        "gqa_images": root / "vqa_eval" / "gqa" / "images",
        "pope": root / "vqa_eval" / "pope" / "coco_pope_random.json",
        "pope_images": root / "vqa_eval" / "pope" / "val2014",
        "sugarcrepe": root / "encoder_eval" / "sugarcrepe",
        "encoder_images": root / "encoder_eval" / "images",
    }
    for key in ("gqa_images", "pope_images", "sugarcrepe", "encoder_images"):
        paths[key].mkdir(parents=True, exist_ok=True)

    for index in range(num_images):
        item = make_item(seed, index, image_size)
        rng = random.Random(stable_seed("reasonclip-synthetic-vqa", seed, index))
        image = f"images/{index:06d}.png"
        if index < num_train and write_images and not (root / image).is_file():
            (root / "images").mkdir(parents=True, exist_ok=True)
            item.image.save(root / image)
        if index < num_train:
            pretrain.append({"id": f"pre-{index}", "image": image, "conversations": [
                {"from": "human", "value": "<image>"}, {"from": "gpt", "value": rng.choice(item.tb)}]})
            turns = []
            for turn, kind in enumerate(rng.sample(QUESTION_KINDS, 2)):
                question, answer = question_answer(item.scene, kind, rng)
                # LLaVA-1.5's mix appends the short-answer instruction to VQA-style questions; the
                # benchmarks' prompts carry it too, so training and evaluation prompts agree.
                prompt = f"{question}\n{SHORT_ANSWER_PROMPT}"
                turns += [{"from": "human", "value": ("<image>\n" if turn == 0 else "") + prompt},
                          {"from": "gpt", "value": answer}]
            instruct.append({"id": f"inst-{index}", "image": image, "conversations": turns})
            continue
        image_id = f"syn{index:06d}"
        item.image.convert("RGB").save(paths["gqa_images"] / f"{image_id}.jpg", quality=95)
        for kind in QUESTION_KINDS:
            question, answer = question_answer(item.scene, kind, rng)
            structural = "verify" if answer in ("yes", "no") else "query"  # GQA's structural types
            gqa[f"{image_id}-{kind}"] = {"imageId": image_id, "question": question, "answer": answer, "fullAnswer": answer,
                                         "types": {"structural": structural, "semantic": kind}}
        pope_name = f"COCO_val2014_{index:012d}.jpg"
        item.image.convert("RGB").save(paths["pope_images"] / pope_name, quality=95)
        question, label = presence_question(item.scene, rng)
        pope.append({"question_id": index, "image": pope_name, "text": question, "label": label})
        item.image.save(paths["encoder_images"] / f"{image_id}.png")
        caption, negatives = relation_caption(item.scene), swap_negatives(item.scene)
        for subset in sugarcrepe:
            sugarcrepe[subset][str(index)] = {"filename": f"{image_id}.png", "caption": caption, "negative_caption": negatives[subset]}

    paths["pretrain"].write_text(json.dumps(pretrain))
    paths["instruct"].write_text(json.dumps(instruct))
    paths["gqa"].write_text(json.dumps(gqa))
    paths["pope"].write_text("".join(json.dumps(row) + "\n" for row in pope))
    for subset, rows in sugarcrepe.items():
        (paths["sugarcrepe"] / f"{subset}.json").write_text(json.dumps(rows))
    return paths
