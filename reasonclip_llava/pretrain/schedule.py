"""Schedules: the stage-1 stream weight w(t) and the learning-rate schedule."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

PUBLISHED_W_SCHEDULE = (0.70, 0.2, 0.50, 0.8, 0.60)


def dual_stream_weight(progress: float, schedule: Sequence[float] = PUBLISHED_W_SCHEDULE) -> float:
    """w(t) of stage 1: the weight of the descriptive stream at progress p = step / max_steps.

    `schedule` is (w_start, p_hold, w_mid, p_ramp_end, w_final): w_start while p <= p_hold, linear from
    w_start to w_mid for p_hold < p <= p_ramp_end, then w_final. The published numbers are
    (0.70, 0.2, 0.50, 0.8, 0.60).
    """
    w_start, p_hold, w_mid, p_ramp_end, w_final = schedule
    if progress <= p_hold:
        return w_start
    if progress <= p_ramp_end:
        return w_start + (w_mid - w_start) * (progress - p_hold) / (p_ramp_end - p_hold)
    return w_final


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine decay to 0 (or constant), stepped once per optimizer step."""
    if kind == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, max_steps)
    if kind == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup_steps)
    raise ValueError(f"unknown scheduler '{kind}' (schedule.scheduler: cosine | constant)")
