"""Shared pieces of the pretraining tests: a tiny workspace, tiny-recipe overrides, single-thread runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoTokenizer

from reasonclip_llava.encoder.modeling import ReasonCLIPForPretraining
from reasonclip_llava.pretrain.demo import prepare_tiny_workspace, tiny_recipe
from reasonclip_llava.testing.tiny import save_learnable_tiny_clip

REPO = Path(__file__).resolve().parents[1]


def make_workspace(root: Path) -> dict[str, Path]:
    """Tiny CLIP + 48 synthetic images (38 train rows) + tiny T5."""
    return prepare_tiny_workspace(root, num_images=48)


def stage_args(paths: dict[str, Path], stage: str, out_dir: Path, *extra: str, model: Path | None = None) -> list[str]:
    """Overrides that point a tiny recipe (tiny_stage1 / tiny_stage2 / tiny_read) at the workspace."""
    data = paths["reasonpro"] if stage == "stage2" else paths["reasonlite"]
    args = [
        f"--model.name_or_path={model or paths['clip']}",
        f"--data.train={data}",
        f"--runtime.output_dir={out_dir}",
        "--data.batch_size=8",
        "--runtime.report_to=",
    ]
    if stage == "read":
        args.append(f"--stage.t5_model={paths['t5']}")
    return [*args, *extra]


def learnable_tiny_clip(out_dir: Path, seed: int = 0, text_layers: int = 2, logit_scale: float | None = None) -> Path:
    """The tiny CLIP (real tokenizer and processor) with initializer_factor 4, for the learning tests."""
    return save_learnable_tiny_clip(out_dir, seed=seed, text_layers=text_layers, logit_scale=logit_scale)


@torch.no_grad()
def swap_pair_embeddings(checkpoint: Path, image_paths: list[Path], captions: list[str], negatives: list[str]) -> tuple[torch.Tensor, ...]:
    """Unit-norm (images, captions, negatives) embeddings of a trained checkpoint, row i of each belonging together.

    `(images * captions).sum(-1) > (images * negatives).sum(-1)` is the image swap accuracy of the learning tests.
    """
    model = ReasonCLIPForPretraining.from_pretrained(checkpoint).eval()
    tokenizer, processor = AutoTokenizer.from_pretrained(checkpoint), AutoImageProcessor.from_pretrained(checkpoint)
    pixels = processor(images=[Image.open(path).convert("RGB") for path in image_paths], return_tensors="pt")["pixel_values"]

    def texts(batch: list[str]) -> torch.Tensor:
        ids = tokenizer(batch, padding=True, return_tensors="pt")["input_ids"]
        return F.normalize(model.encode_text(ids, None)[0], dim=-1)

    return F.normalize(model.encode_image(pixels), dim=-1), texts(captions), texts(negatives)


def recipe(stage: str) -> Path:
    return tiny_recipe({"stage1": "tiny_stage1", "stage2": "tiny_stage2", "read": "tiny_read", "stage0": "tiny_stage1"}[stage])


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Tiny models run fastest (and bit-reproducibly across processes) on one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def checkpoint_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Backbone and head tensors of a training checkpoint."""
    tensors = dict(load_file(str(directory / "model.safetensors")))
    if (directory / "heads.safetensors").is_file():
        tensors.update({f"heads.{k}": v for k, v in load_file(str(directory / "heads.safetensors")).items()})
    return tensors
