"""Zero-shot image-text retrieval on the Karpathy splits (dataset_coco.json / dataset_flickr30k.json).

A query scores 1 at k when ANY of its positives ranks in the top k. Ranks count the candidates that
score strictly higher than the best positive, so ties never depend on sort order.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .embed import EncoderEmbedder
from .sources import field, find_image, percent, read_json, text_field
from .scoring import summarize

RECALL_AT = (1, 5, 10)
_CHUNK = 1024  # query rows per similarity block: COCO's 5k x 25k matrix never sits in memory at once


def _parse_karpathy(data: Path, images: Path, split: str) -> tuple[list, list[str], list[int]]:
    dataset = read_json(data)
    entries = field(dataset, "images", str(data), list)
    refs, texts, owner = [], [], []
    for index, entry in enumerate(entries):
        where = f"{data} image {entry.get('imgid', index) if isinstance(entry, dict) else index}"
        if field(entry, "split", where, str) != split:
            continue
        filename = text_field(entry, "filename", where)
        folder = entry.get("filepath")
        refs.append(find_image(images, ([f"{folder}/{filename}"] if folder else []) + [filename], where))
        sentences = field(entry, "sentences", where, list)
        if not sentences:
            raise ValueError(f"{where}: no sentences")
        for number, sentence in enumerate(sentences):
            texts.append(text_field(sentence, "raw", f"{where} sentence {number}"))
            owner.append(len(refs) - 1)
    if not refs:
        raise ValueError(f"{data}: no images in split {split!r}")
    return refs, texts, owner


def _ranks(queries: torch.Tensor, candidates: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Rank of the best positive of each query: the number of candidates scoring strictly higher.

    positives: (Q, P) candidate indices per query, padded with -1.
    """
    ranks = []
    for start in range(0, len(queries), _CHUNK):
        sims = queries[start : start + _CHUNK] @ candidates.T
        pos = positives[start : start + _CHUNK]
        pos_sims = sims.gather(1, pos.clamp(min=0)).masked_fill(pos < 0, float("-inf"))
        best = pos_sims.max(dim=1, keepdim=True).values
        ranks.append((sims > best).sum(dim=1))
    return torch.cat(ranks)


def retrieval(embedder: EncoderEmbedder, data: Path, images: Path, *, split: str = "test", label: str = "Retrieval") -> dict:
    refs, texts, owner = _parse_karpathy(data, images, split)
    image_emb, text_emb = embedder.embed_images(refs), embedder.embed_texts(texts)
    owner_t = torch.tensor(owner)
    captions_per_image = torch.bincount(owner_t, minlength=len(refs))
    positives = torch.full((len(refs), int(captions_per_image.max())), -1, dtype=torch.long)
    slot = torch.arange(len(owner)) - (torch.cumsum(captions_per_image, 0) - captions_per_image)[owner_t]
    positives[owner_t, slot] = torch.arange(len(owner))
    i2t = _ranks(image_emb, text_emb, positives)
    t2i = _ranks(text_emb, image_emb, owner_t[:, None])
    metrics = {f"i2t_recall@{k}": percent((i2t < k).sum(), len(refs)) for k in RECALL_AT}
    metrics |= {f"t2i_recall@{k}": percent((t2i < k).sum(), len(texts)) for k in RECALL_AT}
    metrics["mean_recall"] = sum(metrics.values()) / len(metrics)
    headline = {f"{label} I2T R@1": ("micro", "i2t_recall@1"), f"{label} T2I R@1": ("micro", "t2i_recall@1")}
    rows = [{"subset": "image_to_text", "id": ref.path.name, "rank": int(rank)} for ref, rank in zip(refs, i2t)]
    rows += [{"subset": "text_to_image", "id": index, "text": text, "rank": int(rank)} for index, (text, rank) in enumerate(zip(texts, t2i))]
    return summarize({split: {"n": len(refs), "n_texts": len(texts), **metrics}}, headline, rows)


def coco_retrieval(embedder: EncoderEmbedder, data: Path, images: Path) -> dict:
    """COCO 5k Karpathy test (dataset_coco.json; images under <images>/<filepath>/<filename>)."""
    return retrieval(embedder, data, images, label="COCO")


def flickr30k_retrieval(embedder: EncoderEmbedder, data: Path, images: Path) -> dict:
    """Flickr30k 1k Karpathy test (dataset_flickr30k.json; images under <images>/<filename>)."""
    return retrieval(embedder, data, images, label="Flickr30k")
