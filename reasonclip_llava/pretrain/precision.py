"""`runtime.precision`: where the trained weights and the AdamW state live.

    fp32_master   (default) fp32 weights and fp32 AdamW state; the forward and backward run under
                  `runtime.mixed_precision`'s autocast (bf16 matmuls). An update smaller than half a bf16
                  step still lands in the fp32 weight.
    authors_bf16  the ReasonCLIP runs as published (`--bf16`: the model loaded with torch_dtype=bfloat16
                  under `accelerate --mixed_precision bf16`): weights, gradients and AdamW's moments in bf16,
                  AdamW stepped by torch's default (multi-tensor) implementation as their `torch.optim.AdamW`.
                  A bf16 weight in [1, 2) moves only in steps of 2^-7 (~0.0078), so an update of lr = 1e-5
                  rounds away, and `logit_scale` (~2.7-3.9, steps of 2^-6) cannot move at lr 1e-4. The stage-1
                  anchor's theta0 stays the fp32 start checkpoint, as in their code (their `orig_model` is
                  loaded without a dtype), so the anchor also sees the bf16 rounding of the start weights.

Which to choose: authors_bf16 to reproduce the published numbers as the authors' runs produced them;
fp32_master (the default) for the strongest encoder, since it keeps every small update. READ trained with
fp32 weights under bf16 autocast, so the READ recipes are already as published under fp32_master.
"""

from __future__ import annotations

import torch
from torch import nn

AUTHORS_BF16 = "authors_bf16"


def master_weights_dtype(precision: str) -> str:
    """What the dry run prints as the weights' and AdamW state's dtype."""
    return "bf16" if precision == AUTHORS_BF16 else "fp32"


def apply_precision(precision: str, encoder: nn.Module) -> None:
    """Cast the trained model (backbone and heads) to the weights' dtype, in place (Parameter objects kept,
    so references held by the objective, e.g. the L2 anchor's, stay valid). Call after the objective is
    built (theta0 is copied from the fp32 start weights) and before the optimizer."""
    if precision == AUTHORS_BF16:
        encoder.to(torch.bfloat16)


def uses_fused_adamw(precision: str) -> bool:
    """fp32_master: the fused AdamW kernel; authors_bf16: torch's default implementation, as the authors ran it."""
    return precision != AUTHORS_BF16
