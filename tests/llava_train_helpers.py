"""Synthetic LLaVA conversation data for the LLaVA-NeXT training tests (PIL images, LLaVA JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}
SIZES = [(40, 70), (64, 48), (32, 32), (50, 90)]  # (height, width): several anyres grids


def write_conversations(root: Path, n_images: int, n_text: int) -> tuple[Path, Path]:
    """A LLaVA JSON with coloured-square photos (PIL) and optional text-only rows."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        name, rgb = list(COLOURS.items())[i % len(COLOURS)]
        height, width = SIZES[i % len(SIZES)]
        pixels = np.full((height, width, 3), 255, np.uint8)
        pixels[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = rgb
        Image.fromarray(pixels).save(images / f"{i}.png")
        rows.append({"id": f"img{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square?"},
            {"from": "gpt", "value": f"The square is {name}."}]})
    for i in range(n_text):
        rows.append({"id": f"txt{i}", "conversations": [
            {"from": "human", "value": "How many birds are there?"},
            {"from": "gpt", "value": "There are three birds above the tree."}]})
    path = root / "data.json"
    path.write_text(json.dumps(rows))
    return path, images


def tiny_llava_stages(root: Path, encoder: str | Path, n_instruct_images: int = 4) -> dict:
    """A tiny Qwen2 LM, the encoder, and the data of both stages (A: images only; B: images + 2 text rows)."""
    from reasonclip_llava.testing.tiny_lm import build_tiny_lm

    lm = build_tiny_lm(root / "qwen2", family="qwen2")
    pretrain_json, pretrain_images = write_conversations(root / "pretrain", n_images=4, n_text=0)
    instruct_json, instruct_images = write_conversations(root / "instruct", n_images=n_instruct_images, n_text=2)
    return dict(root=root, lm=str(lm), encoder=str(encoder),
                pretrain=dict(data_path=str(pretrain_json), image_folder=str(pretrain_images)),
                instruct=dict(data_path=str(instruct_json), image_folder=str(instruct_images)))
