"""Image-text data for ReasonCLIP / READ training: readers, collator, sampler, hard negatives, synthetic data.

Typical use (map-style, parquet or JSONL)::

    dataset = ReasonLiteDataset("reasonlite.parquet", image_root="images/", image_processor=processor)
    sampler = ResumableDistributedSampler(len(dataset), rank=rank, world_size=world, seed=0)
    loader = DataLoader(dataset, batch_size=64, sampler=sampler, collate_fn=ReasonCollator(tokenizer))

Streaming: ``WdsReasonDataset("shards/shard-{000000..000099}.tar", LiteSchema(), processor)``.
Batch field names: see ``reasonclip_llava.data.collator``.
"""

from __future__ import annotations

from .categories import CATEGORIES, CATEGORY_NAMES, TrpLabels, decode_trp_cls, encode_trp_cls
from .collator import ReasonCollator
from .datasets import ImageTextDataset, ReadDataset, ReasonLiteDataset, ReasonProDataset
from .hard_negatives import HardNegativeGenerator, RuleTagger, SpacyTagger, hard_negatives, write_negatives
from .rows import LiteSchema, ProSchema, ReadSchema, RowTable
from .sampler import ResumableDistributedSampler
from .synthetic import generate_synthetic
from .tiny_t5 import build_tiny_t5_tokenizer
from .wds import WdsReasonDataset, write_wds_shards

__all__ = [
    "CATEGORIES",
    "CATEGORY_NAMES",
    "HardNegativeGenerator",
    "ImageTextDataset",
    "LiteSchema",
    "ProSchema",
    "ReadDataset",
    "ReadSchema",
    "ReasonCollator",
    "ReasonLiteDataset",
    "ReasonProDataset",
    "ResumableDistributedSampler",
    "RowTable",
    "RuleTagger",
    "SpacyTagger",
    "TrpLabels",
    "WdsReasonDataset",
    "build_tiny_t5_tokenizer",
    "decode_trp_cls",
    "encode_trp_cls",
    "generate_synthetic",
    "hard_negatives",
    "write_negatives",
    "write_wds_shards",
]
