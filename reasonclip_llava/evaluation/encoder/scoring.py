"""Small shared pieces: an image with its candidate texts, their similarity matrix, subset summaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .embed import EncoderEmbedder, ImageRef
from .sources import mean


@dataclass(frozen=True)
class MatchItem:
    """One image and its candidate texts (which one is correct is the benchmark's business)."""

    id: str
    image: ImageRef
    texts: tuple[str, ...]


def prefetch(embedder: EncoderEmbedder, items_by_subset: Mapping[str, Sequence[MatchItem]]) -> None:
    # Embed the union of all subsets up front: full batches, and every image/text encoded once.
    items = [item for subset in items_by_subset.values() for item in subset]
    embedder.embed_images([item.image for item in items])
    embedder.embed_texts([text for item in items for text in item.texts])


def option_scores(embedder: EncoderEmbedder, items: Sequence[MatchItem]) -> torch.Tensor:
    """(N, K_max) cosine similarity of each image with each of its texts; -inf pads ragged rows."""
    images = embedder.embed_images([item.image for item in items])
    texts = embedder.embed_texts([text for item in items for text in item.texts])
    counts = torch.tensor([len(item.texts) for item in items])
    owner = torch.repeat_interleave(torch.arange(len(items)), counts)
    flat = (images[owner] * texts).sum(-1)
    scores = torch.full((len(items), int(counts.max())), float("-inf"))
    column = torch.arange(len(flat)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    scores[owner, column] = flat
    return scores


def item_rows(subset: str, items: Sequence[MatchItem], scores: torch.Tensor | None = None, **values) -> list[dict]:
    """Per-item records (id, decision, similarities) so a run can be compared item by item with another scorer."""
    rows = []
    for index, item in enumerate(items):
        row = {"subset": subset, "id": item.id}
        for key, column in values.items():
            value = column[index]
            row[key] = value.item() if isinstance(value, torch.Tensor) else value
        if scores is not None:
            row["scores"] = [round(float(s), 6) for s in scores[index] if s != float("-inf")]
        rows.append(row)
    return rows


def describe_average(average: str, metric: str, subsets: Mapping[str, dict]) -> str:
    """How a headline number was averaged, in words, for the result JSON and the report."""
    if average == "macro":
        return f"macro: mean {metric} over the {len(subsets)} subsets ({', '.join(subsets)}), each weighted equally"
    total = sum(subset["n"] for subset in subsets.values())
    return f"micro: {metric} over all {total} items of {', '.join(subsets)}"


def summarize(subsets: dict[str, dict], headline: Mapping[str, tuple[str, str]], items: list[dict] | None = None, **extra) -> dict:
    """Add macro (mean over subsets) and micro (mean over items) averages of every numeric metric.

    headline maps a report column label to (average, metric), e.g. {"SugarCrepe": ("macro", "accuracy")}.
    items: per-item records, written next to the result JSON as <benchmark>_items.jsonl.
    """
    # Counts ("n", "n_dropped", ...) are not metrics; everything else numeric (or None) is averaged.
    metrics = [key for key in next(iter(subsets.values())) if key != "n" and not key.startswith("n_")]
    total = sum(subset["n"] for subset in subsets.values())
    macro, micro = {}, {}
    for metric in metrics:
        scored = [subset for subset in subsets.values() if subset.get(metric) is not None]
        if not scored:
            macro[metric] = micro[metric] = None
            continue
        macro[metric] = mean([subset[metric] for subset in scored])
        micro[metric] = sum(subset[metric] * subset["n"] for subset in scored) / sum(subset["n"] for subset in scored)
    averages = {"macro": macro, "micro": micro}
    return {
        "subsets": subsets,
        "macro": macro,
        "micro": micro,
        "n_items": total,
        "headline": {label: averages[average][metric] for label, (average, metric) in headline.items()},
        "aggregation": {label: describe_average(average, metric, subsets) for label, (average, metric) in headline.items()},
        "items": items or [],
        **extra,
    }
