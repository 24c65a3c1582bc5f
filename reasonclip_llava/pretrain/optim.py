"""The one place that builds the pretraining optimizer: AdamW over parameter groups selected by NAME.

The authors' code (ReasonCLIP `trainning/ft_clip_r_*.py`) builds its groups by substring on the
parameter names of a transformers CLIPModel / SiglipModel:

    "vision_model." in name  -> vision group        "text_model." in name -> text group
    "logit_scale" in name    -> logit_scale group   "text_classifier" / "image_classifier" -> heads
    everything else (visual_projection, text_projection, SigLIP's logit_bias) -> a default group at
    the main lr and the main weight decay

A recipe lists its groups (`optim.groups`, first match wins); a parameter no group matches joins the
default group (`optim.lr`, `optim.weight_decay`). `optim.no_decay` decides which parameters of a group
skip its weight decay: "none" (ReasonCLIP: every parameter of a group takes the group's value),
"bias_and_norm" (READ, i.e. transformers' Trainer: biases and LayerNorm weights), "1d" (open_clip: every
tensor of fewer than 2 dimensions). Skipped parameters sit in `<group>_no_decay` at the group's lr.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import OptimConfig, ParamGroupConfig, resolved_param_groups

DEFAULT_GROUP = "default"


def no_decay_names(model: nn.Module, rule: str) -> set[str]:
    """Names of the parameters that skip weight decay under `rule` (see the module docstring)."""
    names = {name for name, _ in model.named_parameters()}
    if rule == "none":
        return set()
    if rule == "1d":
        return {name for name, param in model.named_parameters() if param.ndim < 2}
    if rule == "bias_and_norm":
        from transformers import Trainer

        # Trainer's own rule (self is unused there): what READ's HF Trainer run decays.
        return names - set(Trainer.get_decay_parameter_names(None, model))
    raise ValueError(f"config key 'optim.no_decay' must be none, bias_and_norm or 1d (got {rule!r})")


def group_of(name: str, groups: list[ParamGroupConfig]) -> ParamGroupConfig | None:
    """The first group one of whose `match` substrings the parameter name contains (None: the default group)."""
    return next((group for group in groups if any(pattern in name for pattern in group.match)), None)


def build_param_groups(model: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """AdamW groups (dicts with "name", "params", "lr", "weight_decay", "param_names"), in the recipe's order.

    Every trainable parameter lands in exactly one group; empty groups are left out.
    """
    groups = resolved_param_groups(optim)
    skip_decay = no_decay_names(model, optim.no_decay)
    built: dict[str, dict[str, Any]] = {}
    order = [g.name for g in groups] + [DEFAULT_GROUP]
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = group_of(name, groups)
        lr = optim.lr if group is None or group.lr is None else group.lr
        weight_decay = optim.weight_decay if group is None or group.weight_decay is None else group.weight_decay
        key = DEFAULT_GROUP if group is None else group.name
        if name in skip_decay:
            key, weight_decay = f"{key}_no_decay", 0.0
        entry = built.setdefault(key, {"name": key, "params": [], "param_names": [], "lr": lr, "weight_decay": weight_decay})
        entry["params"].append(param)
        entry["param_names"].append(name)
    rank = {name: i for i, name in enumerate(order)}
    return sorted(built.values(), key=lambda g: (rank[g["name"].removesuffix("_no_decay")], g["name"].endswith("_no_decay")))


def build_optimizer(model: nn.Module, optim: OptimConfig, fused: bool = True) -> torch.optim.AdamW:
    """AdamW over the named groups; the fused kernel (one launch for all tensors, ~5x faster on CPU too), or
    with fused=False torch's default implementation (runtime.precision=authors_bf16, see precision.py)."""
    groups = [{k: v for k, v in g.items() if k != "param_names"} for g in build_param_groups(model, optim)]
    return torch.optim.AdamW(groups, betas=tuple(optim.betas), eps=optim.eps, fused=True if fused else None)


def describe_param_groups(model: nn.Module, optim: OptimConfig, examples: int = 3) -> list[dict[str, Any]]:
    """The groups as a plan shows them: name, lr, weight decay, parameter count, a few parameter names."""
    return [
        {
            "name": g["name"],
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
            "tensors": len(g["params"]),
            "parameters": sum(p.numel() for p in g["params"]),
            "examples": g["param_names"][:examples],
        }
        for g in build_param_groups(model, optim)
    ]
