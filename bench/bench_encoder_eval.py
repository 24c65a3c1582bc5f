"""Throughput of the encoder evaluation (`reasonclip eval clip`) on a tiny CLIP: batched vs batch size 1.

    python bench/bench_encoder_eval.py [--images 64] [--image-size 224] [--repeats 2] [--batch-sizes 1 64]

Builds a SugarCrepe-format benchmark in a temp dir (7 subsets, one item per image and subset, so each
image appears in 7 subsets) and times evaluate_encoder end to end: reading, image decoding, the
processor, the model and scoring. Prints images/s (distinct images through the vision tower) and
items/s. Figures only, no asserts; the machine load of the moment shows in them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from reasonclip_llava.evaluation.encoder import EncoderEmbedder, evaluate_encoder
from reasonclip_llava.testing.tiny import save_tiny_clip

SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def build_benchmark(root: Path, n_images: int) -> tuple[Path, Path]:
    images, data = root / "val2017", root / "sugarcrepe"
    images.mkdir(parents=True)
    data.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(n_images):
        pixels = torch.randint(0, 256, (96, 128, 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(images / f"{i:012d}.jpg", quality=90)
    for s, subset in enumerate(SUBSETS):
        items = {str(i): {"filename": f"{i:012d}.jpg", "caption": f"a photo number {i} of subset {s}",
                          "negative_caption": f"a drawing number {i + 1} of subset {s}"} for i in range(n_images)}
        (data / f"{subset}.json").write_text(json.dumps(items))
    return data, images


def time_run(model_dir: Path, data: Path, images: Path, batch_size: int, repeats: int) -> tuple[float, dict]:
    seconds, result = [], {}
    for _ in range(repeats):
        embedder = EncoderEmbedder.from_pretrained(model_dir, batch_size=batch_size)  # fresh cache each run
        start = time.perf_counter()
        result = evaluate_encoder(model_dir, "sugarcrepe", data, images, embedder=embedder)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224, help="vision input size of the tiny CLIP (patch 32)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = save_tiny_clip(root / "model", image_size=args.image_size, patch_size=32)
        data, images = build_benchmark(root, args.images)
        print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
              f"torch {torch.__version__}")
        print(f"benchmark: {args.images} images x {len(SUBSETS)} subsets = {args.images * len(SUBSETS)} items; "
              f"tiny CLIP at {args.image_size}px; median of {args.repeats}")
        baseline = None
        for batch_size in args.batch_sizes:
            seconds, result = time_run(model_dir, data, images, batch_size, args.repeats)
            encoded = result["embedding"]["images_encoded"]
            baseline = baseline or seconds
            print(f"batch {batch_size:>4}: {seconds:7.2f} s  {encoded / seconds:8.1f} images/s  "
                  f"{result['n_items'] / seconds:8.1f} items/s  ({encoded} images, {result['embedding']['texts_encoded']} texts "
                  f"encoded)  speed-up x{baseline / seconds:.2f}")


if __name__ == "__main__":
    main()
