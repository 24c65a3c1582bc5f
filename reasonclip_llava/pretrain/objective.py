"""The stage objective: the encoder plus the loss terms of one stage, as one module with a forward.

`StageObjective.forward(batch, step)` is the trainer's `compute_loss`: it encodes what the stage
needs and returns (loss, {term: weighted value}). Wrapping the encoder and the loss in one module
means DDP / DeepSpeed see a single forward per micro-batch (their gradient hooks need that), and
accelerate's autocast covers the whole computation.

The frozen T5 decoder (READ) and the L2 anchor's copy of theta0 are held outside the module tree, so
they are never saved, broadcast by DDP, or handed to the optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoder.modeling import ReasonCLIPForPretraining
from ..losses import (
    CategoryLoss,
    ClipLoss,
    HardNegativeClipLoss,
    L2AnchorLoss,
    ParaphraseAlignmentLoss,
    ReconstructionLoss,
    SigLipLoss,
)
from .config import StageConfig
from .schedule import dual_stream_weight


class StageObjective(nn.Module):
    """forward(batch, step) -> (total loss, {term name: weighted term}) for stage0/stage1/stage2/read."""

    def __init__(
        self,
        encoder: ReasonCLIPForPretraining,
        stage: StageConfig,
        max_steps: int,
        logit_scale_max: float | None,
        t5: nn.Module | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.stage = stage
        self.max_steps = max_steps
        use_siglip = stage.contrastive == "siglip" or (stage.contrastive == "auto" and encoder.family == "siglip")
        if use_siglip and stage.hard_negatives:
            raise ValueError("config key 'stage.hard_negatives' needs the softmax (CLIP) loss; set stage.contrastive=clip")
        # Loss modules without parameters or buffers; plain attributes would do, but submodules print nicely.
        self.contrastive = SigLipLoss(logit_scale_max=logit_scale_max) if use_siglip else ClipLoss(logit_scale_max=logit_scale_max)
        self.hard_negative = HardNegativeClipLoss(logit_scale_max=logit_scale_max)
        self.alignment = ParaphraseAlignmentLoss(logit_scale_max=logit_scale_max)
        self.category = CategoryLoss(stage.category_gamma)
        terms: dict[str, Any] = {}
        if stage.name == "stage1" and stage.anchor_beta > 0:
            terms["anchor"] = L2AnchorLoss(encoder.backbone, beta=stage.anchor_beta)
        if t5 is not None:
            # stage.t5_dropout: T5's dropout active while training (READ's run), off in held-out evaluation.
            terms["reconstruction"] = ReconstructionLoss(t5, dropout=stage.t5_dropout)
        # Not submodules: theta0 and T5 stay out of state_dict, DDP buffer broadcast and the optimizer.
        object.__setattr__(self, "frozen_terms", terms)
        if encoder.family == "siglip" and not use_siglip:
            # The softmax loss never reads logit_bias (the authors' CE mode adds 0.0 instead): frozen, so that
            # DDP (find_unused_parameters off) does not wait for its gradient and AdamW leaves it as it is.
            encoder.backbone.logit_bias.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> "StageObjective":
        """nn.Module.train, reaching the frozen terms too (T5 follows it when stage.t5_dropout is on)."""
        super().train(mode)
        for term in self.frozen_terms.values():
            term.train(mode)
        return self

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module's signature
        # .to(device) / .bfloat16() reach the frozen T5. Not theta0: it follows the parameters' device
        # by itself and stays fp32 (a bf16 copy would round the anchor).
        if "reconstruction" in self.frozen_terms:
            self.frozen_terms["reconstruction"]._apply(fn)
        return super()._apply(fn, recurse)

    # ------------------------------------------------------------------ pieces
    def text_embeddings(self, batch: dict[str, Tensor], fields: list[str]) -> tuple[list[Tensor], Tensor]:
        """One text pass over the fields' captions stacked in order -> (raw embeddings per field, pooled state).

        SigLIP gets its attention mask, as the published runs pass it (text padded to max length). CLIP gets
        none, on purpose: the causal mask already keeps every position up to the pooled EOS from seeing the
        padding after it, so the pooled output is identical, and attention takes its unmasked fast path.
        """
        ids = [batch[f"{name}_input_ids"] for name in fields]
        mask = None
        if self.encoder.family == "siglip":
            mask = torch.cat([batch.get(f"{name}_attention_mask", torch.ones_like(i)) for name, i in zip(fields, ids)])
        embeds, pooled = self.encoder.encode_text(torch.cat(ids), mask)
        return list(embeds.split([i.shape[0] for i in ids])), pooled

    def _contrastive(self, image: Tensor, text: Tensor) -> Tensor:
        if isinstance(self.contrastive, SigLipLoss):
            return self.contrastive(image, text, self.encoder.logit_scale, self.encoder.logit_bias)
        return self.contrastive(image, text, self.encoder.logit_scale)

    def stream_weight(self, step: int) -> float:
        return dual_stream_weight(step / self.max_steps, self.stage.w_schedule)

    # ------------------------------------------------------------------ the loss
    def forward(self, batch: dict[str, Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        stage, encoder = self.stage, self.encoder
        image_raw = encoder.encode_image(batch["pixel_values"])
        image = F.normalize(image_raw, dim=-1)
        parts: dict[str, Tensor] = {}

        if stage.name == "stage1":
            w = self.stream_weight(step)
            # One text pass over [desc; reason]; the collator pads both streams to one length.
            desc, reason = (F.normalize(e, dim=-1) for e in self.text_embeddings(batch, ["desc", "reason"])[0])
            parts["clip_descriptive"] = w * self._contrastive(image, desc)
            parts["clip_reasoning"] = (1.0 - w) * self._contrastive(image, reason)
            if "anchor" in self.frozen_terms:
                parts["anchor"] = self.frozen_terms["anchor"]()

        elif stage.name == "stage2":
            text_raw = self.text_embeddings(batch, ["reason"])[0][0]
            parts["clip_reasoning"] = self._contrastive(image, F.normalize(text_raw, dim=-1))
            if stage.category_gamma > 0:  # gamma 0: the authors' stage 2 without classifiers (ft_clip_r_s2_wo_cls.py)
                image_logits, text_logits = encoder.category_logits(image_raw, text_raw)
                parts["category"], _ = self.category(text_logits, batch["text_category"], image_logits, batch["image_categories"])

        else:  # stage0 / read: one caption stream, optionally with k hard negatives per caption
            if "caption_input_ids" in batch:  # single-caption samples (ReadDataset): caption_*, neg_*, paraphrase_*, recon_*
                prefix = "caption"
            else:  # ReasonLite samples: the stream stage.captions names
                prefix = "reason" if stage.captions == "reasoning" else "desc"
            blocks = {"text": prefix}
            if stage.hard_negatives:
                blocks["negatives"] = "neg"
            if stage.name == "read" and stage.align_weight > 0:
                blocks["paraphrase"] = "paraphrase"
            # One text pass over [captions; negatives; paraphrases] (the collator pads them to one length).
            embeds, pooled = self.text_embeddings(batch, list(blocks.values()))
            texts = {block: F.normalize(e, dim=-1) for block, e in zip(blocks, embeds)}
            if stage.hard_negatives:
                parts["clip_hard_negatives"] = self.hard_negative(image, texts["text"], texts["negatives"], encoder.logit_scale)
            else:
                parts["clip"] = self._contrastive(image, texts["text"])
            if "reconstruction" in self.frozen_terms:
                recon = self.frozen_terms["reconstruction"](
                    pooled[: embeds[0].shape[0]], encoder.recon_projector, batch["recon_labels"], batch.get("recon_attention_mask")
                )
                parts["reconstruction"] = stage.recon_weight * recon
            if "paraphrase" in texts:
                parts["alignment"] = stage.align_weight * self.alignment(texts["paraphrase"], texts["text"], encoder.logit_scale)

        return torch.stack(list(parts.values())).sum(), parts
