"""`reasonclip demo`: the whole pipeline, offline, on tiny models, in a few minutes on 2 CPU cores."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f"   ({time.perf_counter() - start:.1f}s)", flush=True)


def run_demo(work_dir: str | Path = "reasonclip_demo", quick: bool = False) -> dict:
    """Build a tiny CLIP with the real CLIP BPE tokenizer, export it, verify it, load it into LLaVA."""
    from transformers.utils import logging as hf_logging

    from .encoder import ReasonCLIPForPretraining, export_encoder, verify_export
    from .tiny import save_tiny_clip

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    start = _step("1. base model: tiny random CLIP with the real CLIP BPE tokenizer")
    paths["base"] = save_tiny_clip(work / "base_clip")
    print(f"   {paths['base']}")
    _done(start)

    start = _step("2. training checkpoint (ReasonCLIP training model with stage-2 heads)")
    from .encoder import HeadsConfig

    model = ReasonCLIPForPretraining.from_pretrained(paths["base"], heads=HeadsConfig(category_heads=True))
    model.info.stage = "untrained-demo"
    paths["train_ckpt"] = model.save_pretrained(work / "train_ckpt", source=paths["base"])
    _done(start)

    start = _step("3. export -> drop-in CLIP checkpoint, then verify against the base")
    paths["encoder"] = export_encoder(paths["train_ckpt"], work / "encoder", overwrite=True)
    report = verify_export(paths["encoder"], paths["base"])
    print(json.dumps(report, indent=2))
    if not report["ok"]:
        raise RuntimeError(f"verify failed: {report['failed']}")
    _done(start)

    start = _step("4. original LLaVA (llava package): mm_vision_tower = the export")
    paths.update(_load_in_original_llava(paths["encoder"]))
    _done(start)
    return {"paths": paths, "verify": report}


def _load_in_original_llava(encoder_dir: Path) -> dict:
    try:
        from llava.model.multimodal_encoder.builder import build_vision_tower
    except ImportError:
        print("   llava-torch not installed: skipped (pip install --no-deps llava-torch)")
        return {}
    from .encoder.llava_compat import register_with_llava

    register_with_llava()
    args = SimpleNamespace(mm_vision_tower=str(encoder_dir), mm_vision_select_layer=-2, mm_vision_select_feature="patch")
    tower = build_vision_tower(args)
    size = tower.config.image_size  # original LLaVA towers have no image_size property
    features = tower(torch.randn(1, 3, size, size))
    print(f"   {type(tower).__name__}: features {tuple(features.shape)} (patches={tower.num_patches}, hidden={tower.hidden_size})")
    return {}
