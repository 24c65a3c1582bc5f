"""The learning studies' world and measurements (tests/test_stage1_learning.py, bench/, `reasonclip demo`).

Synthetic scenes (`make_item`) with ONE descriptive and ONE reasoning caption per image, so that what a
stage learns does not depend on how a dataset samples among several captions:

    tb  = ["a large filled red circle and a small outlined blue square"]
    trl = ["the red circle is left of the blue square, so the blue square is right of the red circle"]

The descriptive caption names every attribute but no relation, motion or pointing; the reasoning caption
(one template of one of the image's categories) says what follows from the relation, the motion trail or
the pointing triangle. Each stream carries facts the other lacks, which is what lets training on one
stream alone lose the other.

Held-out images are measured with a plain `transformers.CLIPModel` (no code of this package in the
scoring): descriptive R@1 (image -> its descriptive caption among every held-out image's), reasoning
R@1 (the same with reasoning captions) and a 5-way reasoning choice in the RCLIP-Bench style (options
from `synthetic.rclip_items`: one true caption, four false ones from the same template).
"""

from __future__ import annotations

import argparse

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.hard_negatives import stable_seed
from ..images import load_image
from ..evaluation.encoder.embed import _features as projected
from ..data.synthetic import BENCH_SCHEMA, DEFAULT_SPACE, TEMPLATES, SceneSpace, _a, make_item, rclip_bench_row, rclip_items



def study_overrides(model: str | Path, train: str | Path, out: str | Path, steps: int, lr: str = "2e-3", seed: int = 0,
                    batch: int = 32, progress: bool = False) -> list[str]:
    """Recipe overrides that fix every optimizer, schedule and data value of a study run (none left to
    the recipe, so recipe edits do not move the studies). Add the stage's own keys after these."""
    return [f"--model.name_or_path={model}", f"--data.train={train}", f"--data.batch_size={batch}", "--data.max_length=77",
            "--data.caption_columns=[]", "--data.samples=per_image", "--data.sampler=random", "--data.holdout_ratio=0", f"--optim.lr={lr}", f"--optim.lr_vision={lr}", f"--optim.lr_text={lr}",
            "--optim.lr_logit_scale=1e-2", "--optim.lr_heads=1.5e-2", "--optim.weight_decay=0", "--optim.betas=[0.9,0.98]",
            "--optim.eps=1e-6", "--optim.max_grad_norm=null", "--schedule.warmup_steps=50", "--schedule.scheduler=cosine",
            f"--schedule.max_steps={steps}", f"--runtime.seed={seed}", "--runtime.save_every=0", "--runtime.report_to=",
            f"--runtime.progress_bar={str(progress).lower()}", "--runtime.gradient_accumulation_steps=1",
            "--runtime.mixed_precision=no", "--stage.hard_negatives=0", f"--runtime.output_dir={out}"]


def study_captions(item, rng: random.Random) -> tuple[str, str, str]:  # noqa: ANN001
    """(descriptive caption, reasoning caption, its category) of a synthetic item.

    The descriptive caption lists the objects by shape name (circle, square, triangle), so its word order
    says nothing about where they are; the reasoning caption is one template of one of the image's three
    annotated categories (`trp_image`: H and T wherever the image has a triangle or a trail).
    """
    objects = sorted(item.scene.objects, key=lambda o: o.shape)
    desc = " and ".join(f"{_a(o.size)} {o.fill} {o.name}" for o in objects)
    category = rng.choice(item.trp_image)
    return desc, rng.choice(TEMPLATES[category])(item.scene), category


def study_paths(root: str | Path) -> dict[str, Path]:
    """The files `write_study_data` writes under root (image paths in them are relative to root)."""
    root = Path(root)
    return {"root": root, **{key: root / f"{key}.parquet" for key in ("train", "pro", "eval", "choice", "rclip_bench")}}


def write_study_data(root: str | Path, num_train: int, num_eval: int, seed: int = 0, image_size: int = 32,
                     space: SceneSpace = DEFAULT_SPACE) -> dict[str, Path]:
    """Images + train.parquet {image_path, tb: [1], trl: [1]} + pro.parquet (ReasonPro as published: the
    same reasoning caption as trp, trp_cls its category, trp_cls_ls the image's 3) + held-out eval.parquet
    {image_path, desc, reason, category, image_categories} + choice.parquet {image_path, category,
    options: [5], answer} (one 5-way item per annotated category of each held-out image) and the same
    items as rclip_bench.parquet in the released RCLIP-Bench format (for `reasonclip eval clip`)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    train, pro, held_out, choice, bench = [], [], [], [], []
    for index in range(num_train + num_eval):
        item = make_item(seed, index, image_size=image_size, space=space)
        image_path = f"images/{index:06d}.png"
        item.image.save(root / image_path, format="PNG", compress_level=1)
        desc, reason, category = study_captions(item, random.Random(stable_seed("study captions", seed, index)))
        if index < num_train:
            train.append({"image_path": image_path, "tb": [desc], "trl": [reason]})
            pro.append({"image_path": image_path, "trp": reason, "trp_cls": category, "trp_cls_ls": item.trp_image})
            continue
        held_out.append({"image_path": image_path, "desc": desc, "reason": reason, "category": category,
                         "image_categories": item.trp_image})
        rng = random.Random(stable_seed("study choice", seed, index))
        items = rclip_items(item.scene, item.trp_image, rng)
        choice += [{"image_path": image_path, **row} for row in items]
        bench.append(rclip_bench_row(index, image_path, root, desc, items))
    paths = study_paths(root)
    for key, rows in (("train", train), ("pro", pro), ("eval", held_out), ("choice", choice)):
        pq.write_table(pa.Table.from_pylist(rows), paths[key])
    pq.write_table(pa.Table.from_pylist(bench, schema=BENCH_SCHEMA), paths["rclip_bench"])
    return paths


def recall_at_1(images: torch.Tensor, texts: torch.Tensor, captions: list[str]) -> float:
    """Share of images whose most similar caption (among the distinct held-out captions) is their own.

    Two images may share a caption; candidates are the distinct caption strings, so such a pair is not a miss.
    """
    first = {}  # caption -> its first row, in order
    for row, caption in enumerate(captions):
        first.setdefault(caption, row)
    slot = {caption: i for i, caption in enumerate(first)}
    best = (images @ texts[list(first.values())].T).argmax(dim=1)
    own = torch.tensor([slot[c] for c in captions])
    return (best == own).float().mean().item()


@torch.no_grad()
def measure(checkpoint: str | Path, paths: dict[str, Path], blank_image: bool = False) -> dict[str, float]:
    """Descriptive R@1, reasoning R@1, 5-way reasoning choice (overall and per category) of a checkpoint.

    Loaded with plain `CLIPModel` / `CLIPProcessor`. `blank_image=True` scores every item against a white
    image instead: what the text alone decides (the 5-way choice should then sit at chance, 20%).
    """
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(checkpoint).eval(), CLIPProcessor.from_pretrained(checkpoint)
    root = Path(paths["root"])

    def embed_images(image_paths: list[str]) -> torch.Tensor:
        images = [load_image(root / p) for p in image_paths]
        if blank_image:
            images = [Image.new("RGB", image.size, (255, 255, 255)) for image in images]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        return F.normalize(projected(model.get_image_features(pixel_values=pixels)), dim=-1)

    def embed_texts(texts: list[str]) -> torch.Tensor:
        batch = processor(text=texts, padding=True, return_tensors="pt")
        return F.normalize(projected(model.get_text_features(**batch)), dim=-1)

    held_out = pq.read_table(paths["eval"]).to_pylist()
    images = embed_images([r["image_path"] for r in held_out])
    result = {}
    for name, column in (("descriptive R@1", "desc"), ("reasoning R@1", "reason")):
        captions = [r[column] for r in held_out]
        result[name] = recall_at_1(images, embed_texts(captions), captions)
    items = pq.read_table(paths["choice"]).to_pylist()
    item_images = embed_images([r["image_path"] for r in items])
    options = embed_texts([o for r in items for o in r["options"]]).view(len(items), 5, -1)
    chosen = torch.einsum("nd,nkd->nk", item_images, options).argmax(dim=1)
    correct = chosen == torch.tensor([r["answer"] for r in items])
    result["reasoning 5-way"] = correct.float().mean().item()
    for category in dict.fromkeys(sorted(r["category"] for r in items)):
        mask = torch.tensor([r["category"] == category for r in items])
        result[f"5-way {category}"] = correct[mask].float().mean().item()
    return result


@torch.no_grad()
def measure_heads(checkpoint: str | Path, paths: dict[str, Path]) -> dict[str, float]:
    """Held-out accuracy of a stage-2 checkpoint's category heads, applied to plain-CLIPModel embeddings.

    text head: argmax over the 5 categories = the reasoning caption's category. image head: per category,
    sigmoid > 0.5 = "the image is annotated with it". In the default world H and T follow from the pixels
    (a triangle, a trail) and S, A and P top the three up at random, so no image tells them (best rule: the
    majority answer); in a `SceneSpace(category_cues=True)` world every category shows.
    """
    from safetensors.torch import load_file
    from transformers import CLIPModel, CLIPProcessor

    from ..data.categories import CATEGORIES

    heads = load_file(str(Path(checkpoint) / "heads.safetensors"))
    model, processor = CLIPModel.from_pretrained(checkpoint).eval(), CLIPProcessor.from_pretrained(checkpoint)
    held_out = pq.read_table(paths["eval"]).to_pylist()
    root = Path(paths["root"])
    pixels = processor(images=[load_image(root / r["image_path"]) for r in held_out], return_tensors="pt")["pixel_values"]
    image = F.normalize(projected(model.get_image_features(pixel_values=pixels)), dim=-1)
    text = F.normalize(projected(model.get_text_features(**processor(text=[r["reason"] for r in held_out], padding=True, return_tensors="pt"))), dim=-1)
    text_logits = text @ heads["category_heads.text_head.weight"].T + heads["category_heads.text_head.bias"]
    image_logits = image @ heads["category_heads.image_head.weight"].T + heads["category_heads.image_head.bias"]
    truth = torch.tensor([CATEGORIES.index(r["category"]) for r in held_out])
    result = {"text head": (text_logits.argmax(dim=1) == truth).float().mean().item(),
              "text majority": torch.bincount(truth).max().item() / len(truth)}
    annotated = torch.tensor([[c in r["image_categories"] for c in CATEGORIES] for r in held_out])
    for i, category in enumerate(CATEGORIES):
        result[f"image head {category}"] = ((image_logits[:, i] > 0) == annotated[:, i]).float().mean().item()
        result[f"majority {category}"] = max(annotated[:, i].float().mean().item(), 1 - annotated[:, i].float().mean().item())
    return result


@torch.no_grad()
def _image_embeddings(checkpoint: str | Path, root: Path, image_paths: list[str]) -> torch.Tensor:
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(checkpoint).eval(), CLIPProcessor.from_pretrained(checkpoint)
    out = []
    for start in range(0, len(image_paths), 500):
        pixels = processor(images=[load_image(root / p) for p in image_paths[start:start + 500]], return_tensors="pt")["pixel_values"]
        out.append(F.normalize(projected(model.get_image_features(pixel_values=pixels)), dim=-1))
    return torch.cat(out)


def probe_categories(checkpoint: str | Path, paths: dict[str, Path], steps: int = 500) -> dict[str, float]:
    """Held-out accuracy per category of a linear probe on a checkpoint's L2-normalised image embeddings.

    The probe has the image head's form (Linear(embed_dim, 5), BCE on the image's 3 categories as multi-hot)
    but is fitted to convergence (full-batch LBFGS on the training images, encoder frozen), so it says what
    the embedding holds, apart from how the head was trained: a head at the majority rule beside a probe
    above it was undertrained; a probe at the majority rule too means the features lack the cue.
    """
    from ..data.categories import CATEGORIES

    root = Path(paths["root"])
    train = pq.read_table(paths["pro"]).to_pylist()
    held_out = pq.read_table(paths["eval"]).to_pylist()
    x_train = _image_embeddings(checkpoint, root, [r["image_path"] for r in train])
    x_test = _image_embeddings(checkpoint, root, [r["image_path"] for r in held_out])
    y_train = torch.tensor([[float(c in r["trp_cls_ls"]) for c in CATEGORIES] for r in train])
    y_test = torch.tensor([[c in r["image_categories"] for c in CATEGORIES] for r in held_out])
    torch.manual_seed(0)
    probe = torch.nn.Linear(x_train.shape[1], len(CATEGORIES))
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(probe(x_train), y_train)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = probe(x_test) > 0
    return {f"probe {c}": (predicted[:, i] == y_test[:, i]).float().mean().item() for i, c in enumerate(CATEGORIES)}


def add_study_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The study world's command-line arguments every learning-study script takes (bench/*study*.py)."""
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--eval", type=int, default=250)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--start-steps", type=int, default=1000)
    return parser
