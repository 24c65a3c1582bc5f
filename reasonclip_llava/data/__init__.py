"""Image-text data for ReasonCLIP / READ training: readers, collator, sampler, hard negatives, synthetic data.

Typical use (map-style, parquet or JSONL)::

    dataset = ReasonLiteDataset("cc12m_tb_trl_chunk_00.parquet", image_root="images/", image_processor=processor,
                                samples="all_pairs")                       # 9 samples per row, as published
    sampler = ResumableDistributedSampler(len(dataset), rank=rank, world_size=world, seed=0)
    # or DistinctImageSampler(image_groups([dataset]), global_batch=64 * world, rank=rank, world_size=world)
    loader = DataLoader(dataset, batch_size=64, sampler=sampler, collate_fn=ReasonCollator(tokenizer))

Streaming: ``WdsReasonDataset("shards/shard-{000000..000099}.tar", LiteSchema(), processor)``.
Batch field names: see ``reasonclip_llava.data.collator``.
"""

from __future__ import annotations

from .categories import CATEGORIES, CATEGORY_NAMES, TrpLabels, decode_reasonpro_labels, decode_trp_cls, encode_trp_cls
from .collator import ReasonCollator
from .datasets import ImageTextDataset, ReadDataset, ReasonLiteDataset, ReasonProDataset, image_groups
from .hard_negatives import HardNegativeGenerator, RuleTagger, SpacyTagger, hard_negatives, write_negatives
from .rows import LiteSchema, ProSchema, ReadSchema, RowTable
from .sampler import DistinctImageSampler, ResumableDistributedSampler
from .synthetic import generate_synthetic
from ..testing.tiny_t5 import build_tiny_t5_tokenizer
from .wds import WdsReasonDataset, write_wds_shards

__all__ = [
    "CATEGORIES",
    "CATEGORY_NAMES",
    "DistinctImageSampler",
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
    "decode_reasonpro_labels",
    "decode_trp_cls",
    "encode_trp_cls",
    "generate_synthetic",
    "hard_negatives",
    "image_groups",
    "write_negatives",
    "write_wds_shards",
]
