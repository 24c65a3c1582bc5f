"""Batched, cached image and text embeddings for a plain CLIP / SigLIP checkpoint.

Every benchmark asks the embedder for the embeddings of *all* its images and texts; the embedder runs
the model only on keys it has not seen yet, so an image shared by several subsets (or by several
benchmarks evaluated with the same embedder) goes through the vision tower exactly once.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ...images import load_image
from ...encoder.text import TextRule, tokenize


@dataclass(frozen=True)
class ImageRef:
    """One image as the encoder sees it: a file, optionally cropped to a box (x, y, width, height).

    data: the image's encoded bytes when a benchmark embeds them (RCLIP-Bench parquet); `path` is then
    the row's name ("<file.parquet>::<row>"), the cache key and what an error message names.
    """

    path: Path
    box: tuple[float, float, float, float] | None = None
    data: bytes | None = field(default=None, compare=False, repr=False)

    def load(self) -> Image.Image:
        if self.data is not None:
            image = load_image(io.BytesIO(self.data), owner=str(self.path))
        else:
            image = load_image(self.path)
        if self.box is not None:
            x, y, width, height = self.box
            image = image.crop((x, y, x + width, y + height))
        return image


def _features(output) -> torch.Tensor:
    # transformers 5 returns a BaseModelOutputWithPooling whose pooler_output is the projected
    # embedding; older versions (and some remote code) return the tensor itself.
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"cannot find embeddings in a {type(output).__name__} (no pooler_output)")
    return pooled


class EncoderEmbedder:
    """L2-normalised image/text embeddings of a dual encoder, computed in batches and cached by key."""

    def __init__(self, model, image_processor, tokenizer=None, *, batch_size: int = 64, device: str | torch.device = "cpu",
                 name: str = "model", model_dir: Path | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval().to(device)
        self.dtype = next(model.parameters()).dtype
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.name = name
        self.model_dir = model_dir
        self.text_rule = TextRule.for_model(model, tokenizer)
        self._image_cache: dict[ImageRef, torch.Tensor] = {}
        self._text_cache: dict[str, torch.Tensor] = {}
        self.images_encoded = 0  # model forwards, i.e. cache misses
        self.texts_encoded = 0

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, batch_size: int = 64, device: str = "cpu",
                        dtype: str | torch.dtype | None = None) -> EncoderEmbedder:
        """Load a local CLIPModel / SiglipModel checkpoint with its image processor and (if present) tokenizer.

        dtype: None keeps the checkpoint's dtype (transformers' "auto"); e.g. "float32" forces one.
        """
        from transformers import AutoModel, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"not a model checkpoint (no config.json): {model_dir}")
        from ...encoder.modeling import load_dual_encoder_config, training_only_keys
        from ...encoder.open_clip_image_processor import load_image_processor
        from ...io_utils import load_pretrained_strict

        load_dual_encoder_config(model_dir)  # a CLIP / SigLIP, before AutoModel builds whatever config.json names
        # Strict: missing weights would be scored as random ones, unexpected ones mean the config dropped
        # layers; only a released stage-2 checkpoint's training heads are expected extras. Weights are finite.
        model = load_pretrained_strict(AutoModel, model_dir, "model", tolerated=training_only_keys,
                                       **({"dtype": dtype} if dtype is not None else {}))
        for method in ("get_image_features", "get_text_features"):
            if not hasattr(model, method):
                raise ValueError(f"{model_dir}: {type(model).__name__} has no {method}; expected a CLIP/SigLIP dual encoder")
        image_processor = load_image_processor(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir) if _has_tokenizer(model_dir) else None
        return cls(model, image_processor, tokenizer, batch_size=batch_size, device=device, name=model_dir.name, model_dir=model_dir)

    # ---- public API -------------------------------------------------------------------------------

    def embed_images(self, refs: Sequence[ImageRef]) -> torch.Tensor:
        """(len(refs), dim) embeddings aligned with refs; each distinct ref is encoded once per embedder."""
        missing = list(dict.fromkeys(ref for ref in refs if ref not in self._image_cache))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            embeddings = self._encode_images([ref.load() for ref in chunk])
            self.images_encoded += len(chunk)
            self._image_cache.update(zip(chunk, embeddings))
        return self._stack([self._image_cache[ref] for ref in refs])

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), dim) embeddings aligned with texts; each distinct string is encoded once."""
        missing = list(dict.fromkeys(text for text in texts if text not in self._text_cache))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            embeddings = self._encode_texts(chunk)
            self.texts_encoded += len(chunk)
            self._text_cache.update(zip(chunk, embeddings))
        return self._stack([self._text_cache[text] for text in texts])

    def stats(self) -> dict:
        return {"images_encoded": self.images_encoded, "texts_encoded": self.texts_encoded,
                "batch_size": self.batch_size, "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "text_rule": vars(self.text_rule)}

    def logit_scale(self) -> float:
        """exp(logit_scale) of the model (1.0 if it has none): the authors' scores are scale * cosine."""
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.detach().float().exp()) if scale is not None else 1.0

    def provenance(self) -> dict:
        """ReasonCLIP provenance fields of config.json (base model, stage, recipe), if the export wrote them."""
        config = self.model.config.to_dict()
        return {key: config[key] for key in sorted(config) if key.startswith("reasonclip_")}

    # ---- model calls (one batch each) ----------------------------------------------------------------

    @torch.no_grad()
    def _encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self.image_processor(images=images, return_tensors="pt")
        # Pixels follow the weights' dtype (a bf16 checkpoint loads as bf16); masks and shapes stay as they are.
        inputs = {key: value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
                  for key, value in inputs.items() if isinstance(value, torch.Tensor)}
        features = _features(self.model.get_image_features(**inputs))
        return self._finite(F.normalize(features.float(), dim=-1).cpu(), "image")

    @torch.no_grad()
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise FileNotFoundError(f"{self.model_dir or self.name}: no tokenizer saved with the checkpoint; text embeddings need one")
        inputs = {key: value.to(self.device) for key, value in tokenize(self.tokenizer, texts, self.text_rule).items()}
        features = _features(self.model.get_text_features(**inputs))
        return self._finite(F.normalize(features.float(), dim=-1).cpu(), "text")

    def _finite(self, embeddings: torch.Tensor, kind: str) -> torch.Tensor:
        """NaN / inf embeddings would score as 0 % (or at random): an error naming the model, never a result."""
        if not torch.isfinite(embeddings).all():
            rows = int((~torch.isfinite(embeddings)).any(dim=-1).sum())
            raise ValueError(f"{self.model_dir or self.name}: {rows} of {len(embeddings)} {kind} embeddings are NaN/inf "
                             f"(dtype {str(self.dtype).removeprefix('torch.')}); no score is computed from them")
        return embeddings

    @staticmethod
    def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(rows) if rows else torch.empty(0, 0)


def _has_tokenizer(model_dir: Path) -> bool:
    names = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")
    if any((model_dir / name).is_file() for name in names):
        return True
    config = model_dir / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("tokenizer_class"))
