"""FLOPs counted by torch's own FlopCounterMode (works on the meta device: nothing is computed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (2 x multiply-adds, as torch counts them) of everything `fn()` runs, its backward included if it calls one."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def vision_flops_per_image(vision_model: torch.nn.Module, image_size: int, device: str | torch.device | None = None) -> int:
    """Forward FLOPs for one image with all hidden states out."""
    parameter = next(vision_model.parameters())
    pixels = torch.zeros(1, 3, image_size, image_size, device=device or parameter.device, dtype=parameter.dtype)
    with torch.no_grad():
        return count_flops(lambda: vision_model(pixel_values=pixels, output_hidden_states=True))
