"""Encoder-only evaluation (`reasonclip eval clip`): compositional matching, retrieval, zero-shot.

One registry, one decision point: `evaluate_encoder` looks the benchmark up in BENCHMARKS, loads the
checkpoint into an EncoderEmbedder (batched, no_grad, cached by image/text key) and writes one JSON
per run with every subset's result, macro and micro averages and the headline numbers for reports.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .compositional import aro, crepe, sugarcrepe, sugarcrepe_pp, valse, whatsup, winoground
from .embed import EncoderEmbedder, ImageRef
from .rclip_bench import rclip_bench, rclip_bench_retrieval
from .retrieval import coco_retrieval, flickr30k_retrieval, retrieval
from .zeroshot import zeroshot

RESULT_FORMAT = "reasonclip.encoder_eval/1"

BenchmarkFn = Callable[[EncoderEmbedder, Path, Path | None], dict]

BENCHMARKS: dict[str, BenchmarkFn] = {
    "sugarcrepe": sugarcrepe,
    "sugarcrepe_pp": sugarcrepe_pp,
    "whatsup": whatsup,
    "valse": valse,
    "crepe": crepe,
    "winoground": winoground,
    "aro": aro,
    "rclip_bench": rclip_bench,
    "rclip_bench_retrieval": rclip_bench_retrieval,
    "retrieval": retrieval,
    "coco_retrieval": coco_retrieval,
    "flickr30k_retrieval": flickr30k_retrieval,
    "zeroshot": zeroshot,
}

# What --data and --images point at, per benchmark (released formats; images are separate downloads).
DATA_LAYOUT = {
    "sugarcrepe": "--data: folder of add_att.json ... swap_obj.json (7) or one of them; --images: COCO val2017/",
    "sugarcrepe_pp": "--data: folder of replace_att.json ... swap_obj.json (5) or one of them; --images: COCO val2017/",
    "whatsup": "--data: folder of controlled_images_dataset.json, controlled_clevr_dataset.json, coco_qa_{one,two}_obj.json, "
               "vg_qa_{one,two}_obj.json; --images: root holding controlled_images/, controlled_clevr/, val2017/, vg_images/",
    "valse": "--data: folder of the piece JSONs (existence.json, ...) or one; --images: root with <dataset>/<image_file> or <image_file>",
    "crepe": "--data: folder of prod_vg_hard_negs_*.csv (searched recursively) or one CSV; --images: Visual Genome "
             "(<id>.jpg, VG_100K/, VG_100K_2/)",
    "winoground": "--data: examples.jsonl (or its folder); --images: folder of <image_0>.png",
    "aro": "--data: folder with visual_genome_relation.json and visual_genome_attribution.json; --images: their images/ folder",
    "rclip_bench": "--data: the released RCLIP-Bench folder (data/v1-00000-of-00001.parquet, v2-, v3-) or one parquet "
                   "(id, image_name, text, version, sets[{tag, gt, neg[4]}], image{bytes, path}); images are embedded, no --images",
    "rclip_bench_retrieval": "as rclip_bench; gt captions only, R@1/5/10 both directions",
    "retrieval": "--data: Karpathy dataset_*.json (split 'test'); --images: root of <filepath>/<filename>",
    "coco_retrieval": "--data: dataset_coco.json; --images: COCO root holding val2014/",
    "flickr30k_retrieval": "--data: dataset_flickr30k.json; --images: flickr30k-images/",
    "zeroshot": "--data: optional JSON {name, classnames, templates}; --images: ImageFolder root <class>/<image>",
}

ALIASES = {
    "sugarcrepe++": "sugarcrepe_pp",
    "scpp": "sugarcrepe_pp",
    "rclip-bench": "rclip_bench",
    "rclipbench": "rclip_bench",
    "rclip-bench-retrieval": "rclip_bench_retrieval",
    "coco": "coco_retrieval",
    "flickr30k": "flickr30k_retrieval",
    "flickr": "flickr30k_retrieval",
    "zero-shot": "zeroshot",
    "zeroshot_classification": "zeroshot",
}

# Benchmarks whose files embed the images: --images is optional (only for rows without bytes).
EMBEDDED_IMAGES = ("rclip_bench", "rclip_bench_retrieval")

__all__ = ["BENCHMARKS", "DATA_LAYOUT", "EncoderEmbedder", "ImageRef", "evaluate_encoder", "resolve_benchmark", "write_result"]


def resolve_benchmark(name: str) -> str:
    """Canonical benchmark name, or a ValueError listing the known ones."""
    key = name.strip().lower().replace(" ", "_")
    key = ALIASES.get(key, key).replace("-", "_")
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return key


def evaluate_encoder(
    model_dir: str | Path,
    benchmark: str,
    data: str | Path | None,
    images: str | Path | None,
    out_dir: str | Path | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    *,
    model_name: str | None = None,
    embedder: EncoderEmbedder | None = None,
) -> dict:
    """Evaluate a CLIP/SigLIP checkpoint on one benchmark; returns (and writes to out_dir) the result record.

    data: the benchmark's annotation file or folder (optional for zeroshot); images: the image root
    (optional for benchmarks that embed their images, EMBEDDED_IMAGES).
    Pass an existing `embedder` to share its cache across benchmarks on the same images.
    """
    name = resolve_benchmark(benchmark)
    data = Path(data) if data is not None else None
    images = Path(images) if images is not None else None
    if data is None and name != "zeroshot":
        raise ValueError(f"benchmark {name!r} needs --data (its annotation file or folder)")
    if data is not None and not data.exists():
        raise FileNotFoundError(f"benchmark data not found: {data}")
    if images is None and name not in EMBEDDED_IMAGES:
        raise ValueError(f"benchmark {name!r} needs --images (the folder its image names are relative to)")
    if images is not None and not images.is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    model_dir = Path(model_dir)
    if embedder is None:
        embedder = EncoderEmbedder.from_pretrained(model_dir, batch_size=batch_size, device=device)

    started = time.perf_counter()
    scores = BENCHMARKS[name](embedder, data, images)
    items = scores.pop("items", [])
    record = {
        "format": RESULT_FORMAT,
        "model": model_name or model_dir.name,
        "model_dir": str(model_dir.resolve()),
        "benchmark": name,
        "data": str(data.resolve()) if data is not None else None,
        "images": str(images.resolve()) if images is not None else None,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 3),
        **scores,
        "provenance": embedder.provenance(),
        "embedding": embedder.stats(),
    }
    if out_dir is not None:
        record["items_path"] = str(_write_atomic(Path(out_dir) / f"{name}_items.jsonl",
                                                 "".join(json.dumps(item) + "\n" for item in items)))
        record["path"] = str(write_result(record, out_dir))
    return record


def write_result(record: dict, out_dir: str | Path) -> Path:
    """Write <out_dir>/<benchmark>.json atomically (a crash never leaves half a file behind)."""
    return _write_atomic(Path(out_dir) / f"{record['benchmark']}.json", json.dumps(record, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path
