"""`reasonclip pretrain CONFIG --dry-run`: build the run (model, data, optimizer, schedule), train nothing.

The plan is what a user checks before spending GPU-days on a recipe, and what the tests check the
recipes through. It makes the run's own checks through the run's own functions (`check_run_dir`,
`check_run`, the data, schedule, objective and optimizer builders), so a recipe the run would refuse
is refused here with the same one-line error. It lists: samples per epoch (the trainer's own dataset's length, so it follows how rows become
samples), steps, global batch, every optimizer group with its lr / weight decay / size / a few names,
w(t) at the schedule's corners, the number of L2-anchored tensors and the data sources.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..encoder.modeling import ReasonCLIPForPretraining
from .config import OptimConfig, PretrainConfig, apply_global_batch, global_batch, load_config
from .data import build_train_data, data_format
from .objective import StageObjective
from .optim import build_optimizer, build_param_groups, describe_param_groups
from .precision import master_weights_dtype
from .schedule import build_lr_scheduler, dual_stream_weight
from .trainer import check_run, check_run_dir, resolve_eval_interval, resolve_max_steps, resolve_warmup_steps, stage_heads

W_PROGRESS = (0.0, 0.2, 0.5, 0.8, 0.81, 1.0)


def t5_width(config: PretrainConfig) -> int | None:
    """d_model of READ's T5 decoder from its config alone (the decoder itself is not needed for a plan)."""
    if config.stage.name != "read" or config.stage.recon_weight <= 0:
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(config.stage.t5_model).d_model
    except OSError as error:
        raise FileNotFoundError(f"config key 'stage.t5_model': cannot load '{config.stage.t5_model}': {error}") from None


def describe_sources(config: PretrainConfig, dataset: Any) -> list[dict[str, Any]]:
    """One entry per dataset part the trainer reads: file, reader class, samples."""
    parts = getattr(dataset, "datasets", None) or [dataset]
    out = []
    for part in parts:
        rows = getattr(part, "rows", None)
        out.append({
            "path": str(getattr(rows, "path", config.data.train)),
            "format": data_format(config),
            "dataset": type(part).__name__,
            "samples": len(part) if hasattr(part, "__len__") else None,
        })
    return out


def where_parameters_go(encoder: ReasonCLIPForPretraining, optim: OptimConfig, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{parameter name: its group, lr and weight decay}; a name the model does not have is an error naming it."""
    owner = {name: g for g in build_param_groups(encoder, optim) for name in g["param_names"]}
    out = {}
    for name in names:
        if name not in owner:
            raise ValueError(f"--param {name!r}: no trainable parameter of that name (names look like {next(iter(owner))!r})")
        group = owner[name]
        out[name] = {"group": group["name"], "lr": group["lr"], "weight_decay": group["weight_decay"]}
    return out


def plan_pretraining(config: PretrainConfig, world_size: int | None = None, params: Sequence[str] = ()) -> dict[str, Any]:
    """Everything the run would use, built for rank 0 of `world_size` devices (default: $WORLD_SIZE or 1).

    `params`: parameter names whose group, lr and weight decay the plan also lists.
    """
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    apply_global_batch(config, world)
    stage, optim = config.stage, config.optim
    check_run_dir(config)
    encoder = ReasonCLIPForPretraining.from_pretrained(config.model.name_or_path, heads=stage_heads(config, t5_width(config)))
    check_run(config, encoder)
    data = build_train_data(config, encoder, world, 0)
    max_steps = resolve_max_steps(config, data.batches_per_epoch)
    warmup = resolve_warmup_steps(config, max_steps)
    resolve_eval_interval(config, max_steps)
    objective = StageObjective(encoder, stage, max_steps, optim.logit_scale_max)
    build_lr_scheduler(build_optimizer(encoder, optim), config.schedule.scheduler, warmup, max_steps)  # both must build
    anchor = objective.frozen_terms.get("anchor")
    samples = len(data.dataset) if data.sampler is not None else None
    return {
        "recipe": config.runtime.recipe,
        "stage": stage.name,
        "model": {"name_or_path": config.model.name_or_path, "family": encoder.family,
                  "parameters": sum(p.numel() for p in encoder.parameters())},
        "data": {"sources": describe_sources(config, data.dataset), "samples_per_epoch": samples,
                 "batches_per_epoch_per_device": data.batches_per_epoch},
        "batch": {"per_device": config.data.batch_size, "world_size": world,
                  "gradient_accumulation_steps": config.runtime.gradient_accumulation_steps,
                  "global": global_batch(config, world)},
        "schedule": {"epochs": config.schedule.epochs, "max_steps": max_steps, "warmup_steps": warmup,
                     "scheduler": config.schedule.scheduler},
        "optimizer": {"name": "AdamW", "betas": list(optim.betas), "eps": optim.eps, "max_grad_norm": optim.max_grad_norm,
                      "no_decay": optim.no_decay, "groups": describe_param_groups(encoder, optim)},
        "precision": {"mixed_precision": config.runtime.mixed_precision, "precision": config.runtime.precision,
                      "master_weights": master_weights_dtype(config.runtime.precision)},
        "text": {"max_length": data.text_rule.max_length, "padding": data.text_rule.padding,
                 "attention_mask_passed": encoder.family == "siglip", "lowercase": data.text_rule.lowercase,
                 "cleaning": data.text_rule.cleaning},
        "logit_scale_max": optim.logit_scale_max,
        "w_schedule": {str(p): dual_stream_weight(p, stage.w_schedule) for p in W_PROGRESS} if stage.name == "stage1" else None,
        "anchored_tensors": len(anchor.names) if anchor is not None else 0,
        "anchor_beta": stage.anchor_beta if anchor is not None else None,
        "parameters": where_parameters_go(encoder, optim, params),
    }


def plan_from_yaml(config_path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), world_size: int | None = None,
                   params: Sequence[str] = ()) -> dict[str, Any]:
    """`reasonclip pretrain CONFIG --dry-run [--world-size N] [--param NAME ...]`: load, override, validate, plan."""
    return plan_pretraining(load_config(config_path, overrides), world_size, params)
