"""FLOPs per image of a vision tower, counted by torch's own FlopCounterMode (works on the meta device)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def vision_flops_per_image(vision_model: torch.nn.Module, image_size: int, device: str | torch.device | None = None) -> int:
    """Forward FLOPs for one image (2 x multiply-adds, as torch counts them) with all hidden states out."""
    parameter = next(vision_model.parameters())
    pixels = torch.zeros(1, 3, image_size, image_size, device=device or parameter.device, dtype=parameter.dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vision_model(pixel_values=pixels, output_hidden_states=True)
    return int(counter.get_total_flops())
