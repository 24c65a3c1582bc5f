"""Batch collation: stack images, tokenize every text field, drop skipped samples.

``ReasonCollator(tokenizer, max_length=77, t5_tokenizer=None, padding="longest", lowercase=False, text_rule=None)`` turns a list of
samples (dicts from the datasets, ``None`` for a skipped image) into a batch. Fields, B = kept samples:

=========================================  ===============================================================
``pixel_values``                           float [B, 3, H, W] (when the samples carry pixel_values)
``images``                                 list of B PIL images (when they carry ``image`` instead)
``indices``                                long [B]: dataset index (map-style) or stable key id (webdataset)
``desc_input_ids`` / ``desc_attention_mask``            [B, L]  descriptive caption (ReasonLite)
``reason_input_ids`` / ``reason_attention_mask``        [B, L]  reasoning caption (ReasonLite, ReasonPro)
``caption_input_ids`` / ``caption_attention_mask``      [B, L]  anchor caption (READ)
``paraphrase_input_ids`` / ``paraphrase_attention_mask`` [B, L] another caption of the image (READ)
``neg_input_ids`` / ``neg_attention_mask``              [B*k, L] hard negatives: rows i*k .. i*k+k-1
                                                        belong to sample i (READ)
``recon_labels``                           long [B, T<=77]: T5 ids of ``recon_target``, padding = -100 (READ)
``recon_attention_mask``                   long [B, T]
``text_category``                          long [B] in 0..4, order S, A, H, T, P (ReasonPro)
``image_categories``                       float [B, 5] multi-hot (ReasonPro)
``batch_size`` / ``num_skipped`` / ``num_drawn``   ints: kept, dropped (unreadable image), kept + dropped
``worker_id`` / ``num_workers``            ints: the DataLoader worker that built the batch (0 / 1 in-process)
=========================================  ===============================================================

All CLIP-side text fields of one batch are tokenized in one call, so they share the length L (pad to
the longest, or to ``max_length`` with ``padding="max_length"``, which SigLIP text towers need) and
can be concatenated, e.g. ``torch.cat([caption_input_ids, neg_input_ids])`` for the NegCLIP text side.
They are tokenized by the project's one text rule (``encoder.text.tokenize``): ``text_rule`` (the trainer
passes ``TextRule.for_model``'s, e.g. open_clip's text cleaning for a converted model), else one built from
``max_length`` / ``padding`` / ``lowercase``.
A batch where every sample was skipped has ``batch_size == 0`` and only the counter fields.
Pass ``batch["num_drawn"]`` to ``ResumableDistributedSampler.advance`` (or the batch itself to
``WdsReasonDataset.advance``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import get_worker_info

from ..encoder.text import TextRule, tokenize

TEXT_FIELDS = ("desc", "reason", "caption", "paraphrase")  # CLIP-tokenized, one row per sample
NEG_PREFIX = "neg"


class ReasonCollator:
    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 77,
        t5_tokenizer: Any | None = None,
        padding: str = "longest",
        recon_max_length: int = 77,
        lowercase: bool = False,
        text_rule: TextRule | None = None,
    ):
        # lowercase: SigLIP 2 captions, as the authors train it
        self.text_rule = text_rule or TextRule(max_length, padding, lowercase)
        self.tokenizer = tokenizer
        self.t5_tokenizer = t5_tokenizer
        self.recon_max_length = recon_max_length

    def __call__(self, samples: Sequence[dict | None]) -> dict[str, Any]:
        kept = [s for s in samples if s is not None]
        info = get_worker_info()
        batch: dict[str, Any] = {
            "batch_size": len(kept),
            "num_skipped": len(samples) - len(kept),
            "num_drawn": len(samples),
            "worker_id": info.id if info else 0,
            "num_workers": info.num_workers if info else 1,
        }
        if not kept:
            return batch
        keys = set(kept[0])
        for sample in kept[1:]:
            if set(sample) != keys:
                raise ValueError(f"samples in one batch have different fields: {sorted(keys)} vs {sorted(sample)}")
        batch["indices"] = torch.tensor([int(s["index"]) for s in kept], dtype=torch.long)
        if "pixel_values" in keys:
            batch["pixel_values"] = torch.stack([torch.as_tensor(s["pixel_values"]) for s in kept])
        if "image" in keys:
            batch["images"] = [s["image"] for s in kept]
        batch.update(self._tokenize(kept, keys))
        if "recon_target" in keys:
            batch.update(self._recon_labels([s["recon_target"] for s in kept]))
        if "text_category" in keys:
            batch["text_category"] = torch.tensor([int(s["text_category"]) for s in kept], dtype=torch.long)
        if "image_categories" in keys:
            batch["image_categories"] = torch.tensor([list(s["image_categories"]) for s in kept], dtype=torch.float)
        return batch

    def _tokenize(self, kept: list[dict], keys: set[str]) -> dict[str, torch.Tensor]:
        fields = [f for f in TEXT_FIELDS if f in keys]
        texts: list[str] = [s[f] for f in fields for s in kept]
        blocks = [(f, len(kept)) for f in fields]
        if "negatives" in keys:
            k = len(kept[0]["negatives"])
            for s in kept:
                if len(s["negatives"]) != k:
                    raise ValueError(f"sample {s['index']} has {len(s['negatives'])} negatives, expected {k}")
            texts += [n for s in kept for n in s["negatives"]]  # sample-major: rows i*k .. i*k+k-1
            blocks.append((NEG_PREFIX, len(kept) * k))
        if not texts:
            return {}
        encoded = tokenize(self.tokenizer, texts, self.text_rule)
        out, start = {}, 0
        for name, count in blocks:
            out[f"{name}_input_ids"] = encoded["input_ids"][start : start + count]
            out[f"{name}_attention_mask"] = encoded["attention_mask"][start : start + count]
            start += count
        return out

    def _recon_labels(self, targets: list[str]) -> dict[str, torch.Tensor]:
        if self.t5_tokenizer is None:
            raise ValueError("samples carry 'recon_target' but ReasonCollator got no t5_tokenizer")
        encoded = self.t5_tokenizer(
            targets,
            padding="longest",
            truncation=True,
            max_length=self.recon_max_length,
            return_attention_mask=True,
            return_tensors="pt",
        )
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        return {"recon_labels": labels, "recon_attention_mask": encoded["attention_mask"]}
