"""The one pretraining trainer for every ReasonCLIP stage (stage0, stage1, stage2, read).

A stage is a config (see config.py); this file builds the pieces it names and runs one loop:

    model + stage terms -> StageObjective (objective.py), prepared by accelerate (DDP / DeepSpeed)
    AdamW over the recipe's parameter groups, selected by name (optim.py), each with its own LR and weight decay
    warmup + cosine schedule, stepped once per optimizer step
    checkpoints: output_dir/checkpoint-{step}/  = training checkpoint (model.save_pretrained, loadable by
                 ReasonCLIPForPretraining.from_pretrained / AutoModel) + trainer_state/ (accelerate
                 save_state: optimizer, scheduler, model copy; plus, as JSON / safetensors (state.py), step,
                 sampler position, skipped-image count and the RNG states). Written to a temp dir and
                 renamed, so a crash never leaves a half-written checkpoint-{step}.
    final:       output_dir/final/ (training checkpoint, heads included; no trainer_state): the last step's
                 weights, or with runtime.final_weights=best a copy of best/ (the authors' exported result)
                 and the last step's weights in output_dir/last/
    best:        output_dir/best/ (same format as final/), the weights with the lowest held-out loss so
                 far, when data.holdout_ratio > 0 (evaluated every data.eval_every, and at the end;
                 each value appended to output_dir/eval_loss.jsonl)

Resume (`runtime.resume_from: <dir> | latest`) restores all of it, so on a CPU with a fixed seed the
final weights equal an uninterrupted run's bit for bit. Every file of the checkpoint is checked before
anything is loaded (io_utils.check_state_dir: a planted pickle is refused, never unpickled), and the run
claims output_dir for its whole length (io_utils.claim_run_directory): a second run into it is refused.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DeepSpeedPlugin, ProjectConfiguration, set_seed
from torch import nn

from ..encoder.modeling import HeadsConfig, ReasonCLIPForPretraining
from ..io_utils import claim_run_directory, is_main_launch_rank, replace_directory, write_errors_as_one_line
from ..losses import clamp_logit_scale_
from ..value_checks import check_max_length
from .config import PretrainConfig, apply_global_batch
from .data import build_train_data
from .objective import StageObjective
from .optim import build_optimizer, build_param_groups  # noqa: F401  (build_param_groups: part of this module's API)
from .precision import apply_precision, uses_fused_adamw
from .run_dir import (
    check_output_dir, check_resume_config, clear_run_outputs, clear_stale_temp_dirs, is_own_checkpoint, readable_checkpoints,
    restore_newest_loadable, write_run_record,
)
from .state import TrainingProgress, restore_rng_state, save_rng_state
from .schedule import build_lr_scheduler
from .speed import (  # noqa: F401 (compile_repeated_layers: public here too)
    apply_speed_options, attention_backend, check_device_options, compile_repeated_layers, compile_step, run_device,
)


CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state"
FINAL_DIR = "final"
BEST_DIR = "best"
LAST_DIR = "last"  # the last step's weights when runtime.final_weights=best puts the best ones in final/

# --------------------------------------------------------------------------- building blocks
def stage_heads(config: PretrainConfig, t5_width: int | None) -> HeadsConfig:
    """Training-only heads a stage needs: category heads (stage 2), the T5 projector (READ)."""
    return HeadsConfig(category_heads=config.stage.name == "stage2" and config.stage.category_gamma > 0, recon_dim=t5_width)


def build_accelerator(config: PretrainConfig) -> Accelerator:
    runtime = config.runtime
    plugin = None
    if runtime.deepspeed:
        check_deepspeed_config(config)
        plugin = DeepSpeedPlugin(
            hf_ds_config=runtime.deepspeed,
            gradient_accumulation_steps=runtime.gradient_accumulation_steps,
            gradient_clipping=config.optim.max_grad_norm or 0.0,
            zero3_init_flag=False,  # see pretrain(): the model is loaded whole, then partitioned
        )
    report_to = [t for t in runtime.report_to if t]
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != runtime.mixed_precision:
        # accelerate keeps one accelerator state per process and refuses another mixed precision in a later
        # run of the same process (a bf16 run, then an fp32 one); its process group (PartialState) is kept.
        AcceleratorState._reset_state()
    accelerator = Accelerator(
        # On a machine without an accelerator, cpu=True is what makes accelerate run torchrun's processes
        # as one gloo group (MULTI_CPU) instead of independent single-process runs.
        cpu=not _has_accelerator() and plugin is None,
        mixed_precision=runtime.mixed_precision,
        gradient_accumulation_steps=runtime.gradient_accumulation_steps,
        deepspeed_plugin=plugin,
        log_with=report_to or None,
        project_config=ProjectConfiguration(project_dir=runtime.output_dir, logging_dir=str(Path(runtime.output_dir) / "logs")),
        # We step the LR schedule ourselves once per optimizer step (accelerate would step it
        # num_processes times per step, which assumes a schedule built in samples).
        step_scheduler_with_optimizer=False,
    )
    apply_global_batch(config, accelerator.num_processes)  # before anything reads data.batch_size
    if plugin is not None:
        # The micro batch is ours (the dataloader is not prepared by accelerate), so "auto" cannot be resolved.
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = config.data.batch_size
        ds_config["train_batch_size"] = config.data.batch_size * runtime.gradient_accumulation_steps * accelerator.num_processes
    return accelerator


def check_deepspeed_config(config: PretrainConfig) -> None:
    """runtime.deepspeed: a readable JSON, and no ZeRO-3 under the stage-1 L2 anchor."""
    path = config.runtime.deepspeed
    if not path:
        return
    if not Path(path).is_file():
        raise FileNotFoundError(f"config key 'runtime.deepspeed': no DeepSpeed JSON at {path}")
    try:
        ds_config = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"config key 'runtime.deepspeed': {path} is not valid JSON ({error})") from None
    zero_stage = (ds_config.get("zero_optimization") or {}).get("stage", 0) if isinstance(ds_config, dict) else 0
    if zero_stage == 3 and config.stage.name == "stage1" and config.stage.anchor_beta > 0:
        raise ValueError(f"{path}: ZeRO-3 partitions the weights the stage-1 L2 anchor reads; use ZeRO-2")


def check_run(config: PretrainConfig, encoder: ReasonCLIPForPretraining) -> None:
    """Every refusal the run makes from the config, the start model and the machine before it trains.

    The dry run (plan.py) calls this same function, after the same `check_run_dir`, so the plan refuses
    what the run refuses (data and schedule errors come from the builders both share).
    """
    positions = getattr(encoder.config.text_config, "max_position_embeddings", None)
    check_max_length(config.data.max_length, positions, "data.max_length", config.model.name_or_path)
    check_deepspeed_config(config)
    check_device_options(config, run_device())


def load_t5_decoder(config: PretrainConfig) -> nn.Module | None:
    """The frozen T5 of READ's reconstruction term (None when the term is off)."""
    if config.stage.name != "read" or config.stage.recon_weight <= 0:
        return None
    from transformers import T5ForConditionalGeneration

    try:
        t5 = T5ForConditionalGeneration.from_pretrained(config.stage.t5_model)
    except OSError as error:
        raise FileNotFoundError(f"config key 'stage.t5_model': cannot load '{config.stage.t5_model}': {error}") from None
    t5.encoder = None  # only the decoder and lm_head run; the encoder's weights are never used
    if config.runtime.mixed_precision == "bf16":
        # Frozen, so no fp32 master copy is needed; fp32 weights under autocast would be re-cast to bf16
        # in every forward and again in backward (frozen weights are not in autocast's cast cache), and
        # would take twice the memory. fp16 keeps fp32: T5 overflows in fp16.
        t5.to(torch.bfloat16)
    t5.requires_grad_(False)
    return t5.train() if config.stage.t5_dropout else t5.eval()


# --------------------------------------------------------------------------- checkpoints
def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (renamed into place) in step order."""
    found = []
    for path in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.is_dir() and suffix.isdigit() and (path / TRAINER_STATE).is_dir():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def resume_candidates(config: PretrainConfig) -> list[Path]:
    """Checkpoints runtime.resume_from may resume, oldest first ("latest": all complete ones; a dir: itself)."""
    resume = config.runtime.resume_from
    if not resume:
        return []
    if resume == "latest":
        return list_checkpoints(Path(config.runtime.output_dir))
    path = Path(resume)
    if not (path / TRAINER_STATE).is_dir():
        raise FileNotFoundError(f"config key 'runtime.resume_from': {path} is not a checkpoint (no {TRAINER_STATE}/ inside)")
    return [path]


def check_run_dir(config: PretrainConfig) -> list[Path]:
    """Before anything is loaded: may this run use output_dir, and resume what it names? Returns the candidates.

    Every file of the candidates is checked here (a planted or cut-off file is refused, or skipped by
    `latest` with a notice), so nothing heavy is loaded for a resume that cannot happen.
    """
    candidates = readable_checkpoints(resume_candidates(config), explicit=config.runtime.resume_from != "latest")
    if candidates:
        check_resume_config(candidates[-1], config)
    check_output_dir(config, has_checkpoint=bool(candidates))
    return candidates


def save_checkpoint(accelerator: Accelerator, objective: nn.Module, config: PretrainConfig, step: int,
                    progress: TrainingProgress) -> Path:
    """checkpoint-{step}/ = training checkpoint + trainer_state/ (accelerate save_state + state.py), written atomically."""
    target = Path(config.runtime.output_dir) / f"{CHECKPOINT_PREFIX}{step}"

    def write_state(tmp: Path) -> None:
        state_dir = tmp / TRAINER_STATE
        accelerator.save_state(str(state_dir))
        save_rng_state(state_dir, accelerator.process_index)  # and accelerate's pickled copy removed
        if accelerator.is_main_process:
            progress.accelerator_step = accelerator.step
            progress.save(state_dir)
            write_run_record(tmp, config)  # which run wrote it: resume compares, pruning keeps others' checkpoints

    _write_atomically(accelerator, objective, config, target, write_state)
    if accelerator.is_main_process:
        _prune_checkpoints(target.parent, config)
    return target


def _write_atomically(accelerator: Accelerator, objective: nn.Module, config: PretrainConfig, target: Path, extra=None) -> None:  # noqa: ANN001
    """Save the model (plus what `extra(tmp_dir)` writes, on every rank) to a temp dir, then rename it to target.

    A crash at any point leaves either the previous target or none, never a half-written one.
    """
    tmp = target.with_name(f".tmp-{target.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # A failed write (a full disk) removes tmp and is one line; earlier checkpoints are untouched.
    with write_errors_as_one_line(target, tmp if accelerator.is_main_process else None):
        if extra is not None:
            extra(tmp)  # collective: every rank writes its part (RNG states, ZeRO shards)
        encoder = accelerator.unwrap_model(objective).encoder
        with _full_weights(accelerator, encoder), _scalars_as_0d(encoder):  # collective under ZeRO-3
            if accelerator.is_main_process:
                encoder.save_pretrained(tmp, source=config.model.name_or_path)
        if accelerator.is_main_process:
            replace_directory(tmp, target)  # replace, never merge
    accelerator.wait_for_everyone()


def _copy_atomically(accelerator: Accelerator, source: Path, target: Path, extra) -> None:  # noqa: ANN001
    """target = a copy of the checkpoint dir `source` plus what `extra(tmp_dir)` writes, renamed into place."""
    if accelerator.is_main_process:
        tmp = target.with_name(f".tmp-{target.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        with write_errors_as_one_line(target, tmp):
            shutil.copytree(source, tmp)
            extra(tmp)
            replace_directory(tmp, target)
    accelerator.wait_for_everyone()


def _scalars_as_1d(module: nn.Module) -> None:
    """Hold 0-d parameters (CLIP's logit_scale, SigLIP's logit_bias) as shape [1].

    DeepSpeed (0.19) broadcasts every parameter through a uint8 view at initialisation, which fails
    on 0-d tensors. Shape [1] broadcasts the same way in the losses; `_scalars_as_0d` restores the
    checkpoint shape while saving.
    """
    for owner in module.modules():
        for name, param in list(owner.named_parameters(recurse=False)):
            if param.ndim == 0:
                owner._parameters[name] = nn.Parameter(param.detach().reshape(1), requires_grad=param.requires_grad)
                owner._reasonclip_scalars = (*getattr(owner, "_reasonclip_scalars", ()), name)


@contextlib.contextmanager
def _scalars_as_0d(module: nn.Module):  # noqa: ANN202
    """While saving: the parameters `_scalars_as_1d` reshaped are 0-d again, as the checkpoint format wants."""
    reshaped = [getattr(owner, name) for owner in module.modules() for name in getattr(owner, "_reasonclip_scalars", ())]
    for param in reshaped:
        param.data = param.data.reshape(())
    try:
        yield
    finally:
        for param in reshaped:
            param.data = param.data.reshape(1)


def _full_weights(accelerator: Accelerator, module: nn.Module):  # noqa: ANN202
    """Context in which `module` holds its full weights (ZeRO-3 partitions them; elsewhere a no-op)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.zero_stage == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    return contextlib.nullcontext()


def _prune_checkpoints(output_dir: Path, config: PretrainConfig) -> None:
    """Keep the newest `keep_last` checkpoints of this run; checkpoints another run wrote are never counted or removed."""
    keep_last = config.runtime.keep_last
    if keep_last is None or keep_last <= 0:
        return
    own = [path for path in list_checkpoints(output_dir) if is_own_checkpoint(path, config)]
    for old in own[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- the run
def pretrain(config: PretrainConfig) -> Path:
    """Run one stage as configured; return output_dir/final (a training checkpoint, heads included)."""
    # The main process claims output_dir for the whole run: a second run into it fails at once.
    with claim_run_directory(config.runtime.output_dir, enabled=is_main_launch_rank()), \
            attention_backend(config.model.attention, run_device()):  # model.attention, for the whole run
        return _pretrain(config)


def load_checkpoint_state(accelerator: Accelerator, checkpoint: Path, progress: TrainingProgress) -> None:
    """accelerate's state (model, optimizer, scheduler), then ours: progress and this process's RNG states."""
    state_dir = Path(checkpoint) / TRAINER_STATE
    progress.load(state_dir)  # first: a checkpoint without it is refused before accelerate reads anything
    accelerator.load_state(str(state_dir))
    restore_rng_state(state_dir, accelerator.process_index)
    accelerator.step = progress.accelerator_step


def _pretrain(config: PretrainConfig) -> Path:
    runtime, stage = config.runtime, config.stage
    set_seed(runtime.seed)
    output_dir = Path(runtime.output_dir)
    candidates = check_run_dir(config)  # refuses a mixed or changed run (or a planted file) before anything heavy is loaded
    if is_main_launch_rank():
        clear_stale_temp_dirs(output_dir)  # left by a killed run; the claim means no other writer is at work

    # Loaded before the accelerator exists: with a ZeRO-3 config in place, transformers would build the
    # model inside deepspeed.zero.Init; a CLIP-sized model is loaded whole and partitioned by prepare().
    t5 = load_t5_decoder(config)
    encoder = ReasonCLIPForPretraining.from_pretrained(
        config.model.name_or_path, heads=stage_heads(config, t5.config.d_model if t5 is not None else None)
    )
    check_run(config, encoder)
    accelerator = build_accelerator(config)
    encoder.info.stage, encoder.info.recipe = stage.name, runtime.recipe or encoder.info.recipe
    if config.optim.logit_scale_max is not None:
        clamp_logit_scale_(encoder.logit_scale, config.optim.logit_scale_max)
    if config.model.gradient_checkpointing:
        encoder.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    apply_speed_options(config, encoder, t5, run_device())  # runtime.fp8, model.torch_compile=regional

    data = build_train_data(config, encoder, accelerator.num_processes, accelerator.process_index)
    accum = runtime.gradient_accumulation_steps
    max_steps = resolve_max_steps(config, data.batches_per_epoch)
    warmup = resolve_warmup_steps(config, max_steps)
    eval_interval = resolve_eval_interval(config, max_steps)

    if accelerator.state.deepspeed_plugin is not None:
        _scalars_as_1d(encoder)
    objective = StageObjective(encoder, stage, max_steps, config.optim.logit_scale_max, t5=t5)
    apply_precision(runtime.precision, encoder)  # after theta0 is copied in fp32, before AdamW sees the weights
    optimizer = build_optimizer(encoder, config.optim, fused=uses_fused_adamw(runtime.precision))
    scheduler = build_lr_scheduler(optimizer, config.schedule.scheduler, warmup, max_steps)
    objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)
    if config.model.torch_compile == "step":
        compile_step(objective)  # the prepared module: accelerate's autocast (and DDP) inside the graph

    progress = TrainingProgress()  # saved as JSON beside accelerate's state, never registered (that is a pickle)
    resume = restore_newest_loadable(candidates, lambda path: load_checkpoint_state(accelerator, path, progress),
                                     explicit=runtime.resume_from != "latest")
    if resume is not None:
        data.load_state_dict(progress.data)
        accelerator.print(f"resumed from {resume} at step {progress.step}")
    if progress.step >= max_steps and resume is not None:
        accelerator.print(f"{resume} is already at max_steps={max_steps}")

    if accelerator.is_main_process:
        if runtime.overwrite and resume is None:
            clear_run_outputs(output_dir)  # the old run's checkpoints and final/ never mix with this one's
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "pretrain_config.json").write_text(json.dumps(config.to_dict(), indent=2))
        write_run_record(output_dir, config)
    if accelerator.log_with:
        accelerator.init_trackers("pretrain", config=_flat_hparams(config))
    bar = _progress_bar(accelerator, runtime.progress_bar, progress.step, max_steps, stage.name)
    first_step, loss = progress.step, None

    batches = data.batches(accelerator.device)
    for step in range(progress.step, max_steps):
        for _ in range(accum):
            with accelerator.accumulate(objective):
                loss, parts = objective(next(batches), step)
                _stop_if_not_finite(accelerator, loss, step)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.optim.max_grad_norm:
                    accelerator.clip_grad_norm_(objective.parameters(), config.optim.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if config.optim.logit_scale_max is not None:
            clamp_logit_scale_(accelerator.unwrap_model(objective).encoder.logit_scale, config.optim.logit_scale_max)
        progress.step, progress.data = step + 1, data.state_dict()

        if step % runtime.log_every == 0 or step + 1 == max_steps:
            _log(accelerator, loss, parts, optimizer, objective, step, bar)
        bar.update(1)
        if data.heldout is not None and ((step + 1) % eval_interval == 0 or step + 1 == max_steps):
            evaluate_and_keep_best(accelerator, objective, config, data.heldout, progress)
        if runtime.save_every and (step + 1) % runtime.save_every == 0 and step + 1 < max_steps:
            save_checkpoint(accelerator, objective, config, step + 1, progress)

    bar.close()
    final = output_dir / FINAL_DIR

    def write_summary(tmp: Path) -> None:
        if accelerator.is_main_process:
            summary = {"steps": max_steps, "skipped_images": data.skipped_images}
            if runtime.final_weights == "best":
                summary["final_weights"] = "best"  # final/ holds best/'s weights, the last step's are in last/
            if data.heldout is not None:
                summary.update(best_eval_loss=progress.best_eval_loss, best_step=progress.best_step)
            (tmp / "training_summary.json").write_text(json.dumps(summary))
            write_run_record(tmp, config)

    if runtime.final_weights == "best":  # the authors' result: the lowest held-out loss; the last step kept in last/
        _write_atomically(accelerator, objective, config, output_dir / LAST_DIR, write_summary)
        _copy_atomically(accelerator, output_dir / BEST_DIR, final, write_summary)
    else:
        _write_atomically(accelerator, objective, config, final, write_summary)
    accelerator.end_training()
    if runtime.progress_bar and loss is not None:  # the bar's one summary line
        accelerator.print(f"{stage.name}: steps {first_step}-{max_steps}, last loss {loss.item():.4f} -> {final}")
    return final


def resolve_max_steps(config: PretrainConfig, batches_per_epoch: int | None) -> int:
    """Optimizer steps of the run: schedule.max_steps, else epochs * (batches per epoch / accumulation)."""
    if config.schedule.max_steps is not None:
        if config.schedule.max_steps < 1:
            raise ValueError(f"config key 'schedule.max_steps' must be >= 1 (got {config.schedule.max_steps})")
        return config.schedule.max_steps
    if batches_per_epoch is None:
        raise ValueError("config key 'schedule.max_steps' is required for a streaming dataset (webdataset) of unknown length")
    steps = int(config.schedule.epochs * batches_per_epoch) // config.runtime.gradient_accumulation_steps
    if steps < 1:
        raise ValueError(
            f"config key 'data.batch_size': {batches_per_epoch} batches per epoch give no optimizer step "
            f"(epochs={config.schedule.epochs}, accumulation={config.runtime.gradient_accumulation_steps})"
        )
    return steps


def resolve_warmup_steps(config: PretrainConfig, max_steps: int) -> int:
    """schedule.warmup_steps, else ceil(warmup_ratio * max_steps) as transformers' Trainer (the published runs) counts it."""
    if config.schedule.warmup_steps is not None:
        return config.schedule.warmup_steps
    return math.ceil(config.schedule.warmup_ratio * max_steps)


# --------------------------------------------------------------------------- held-out loss
def resolve_eval_interval(config: PretrainConfig, max_steps: int) -> int:
    """Optimizer steps between held-out evaluations: data.eval_every as a fraction of the run (< 1) or in steps."""
    every = config.data.eval_every
    return max(1, int(max_steps * every)) if every < 1 else int(every)


@torch.no_grad()
def evaluate(accelerator: Accelerator, objective: nn.Module, heldout, step: int) -> float:  # noqa: ANN001
    """The stage's loss at `step` over every held-out sample, weighted by batch size, averaged over ranks."""
    objective.eval()
    total = torch.zeros(2, device=accelerator.device)  # (sum of loss x batch size, samples)
    for batch in heldout.one_pass(accelerator.device):
        loss, _ = objective(batch, step)
        total += torch.stack([loss.detach().float() * batch["batch_size"], total.new_tensor(float(batch["batch_size"]))])
    objective.train()
    if accelerator.num_processes > 1:
        total = accelerator.reduce(total, "sum")
    return (total[0] / total[1].clamp(min=1)).item()


def evaluate_and_keep_best(accelerator: Accelerator, objective: nn.Module, config: PretrainConfig, heldout,  # noqa: ANN001
                           progress: TrainingProgress) -> float:
    """Held-out loss after progress.step steps, logged; a new lowest one replaces best/ (written atomically).

    The loss is the stage's at p = steps done / max_steps, as the authors' Trainer evaluates it (global_step).
    """
    loss = evaluate(accelerator, objective, heldout, progress.step)
    improved = loss < progress.best_eval_loss
    if improved:
        progress.best_eval_loss, progress.best_step = loss, progress.step

        def write_eval(tmp: Path) -> None:
            if accelerator.is_main_process:
                (tmp / "eval_summary.json").write_text(json.dumps({"step": progress.step, "eval_loss": loss}))

        _write_atomically(accelerator, objective, config, Path(config.runtime.output_dir) / BEST_DIR, write_eval)
    if accelerator.is_main_process:
        with (Path(config.runtime.output_dir) / "eval_loss.jsonl").open("a") as log:
            log.write(json.dumps({"step": progress.step, "eval_loss": loss, "best": improved}) + "\n")
    if accelerator.log_with:
        accelerator.log({"eval/loss": loss}, step=progress.step - 1)
    return loss


# --------------------------------------------------------------------------- small helpers
def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def _stop_if_not_finite(accelerator: Accelerator, loss: torch.Tensor, step: int) -> None:
    bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).item() else 1.0, device=loss.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    if bad.item():
        # Nothing is saved: the last good checkpoint stays the latest.
        raise FloatingPointError(f"non-finite loss ({loss.item()}) at step {step}; stopping without saving")


def _log(accelerator, loss, parts, optimizer, objective, step, bar) -> None:  # noqa: ANN001
    values = {"loss": loss.item(), **{f"loss/{k}": v.item() for k, v in parts.items()}}
    values.update({f"lr/{group['name']}": group["lr"] for group in optimizer.param_groups})
    values["logit_scale"] = accelerator.unwrap_model(objective).encoder.logit_scale.item()
    if accelerator.log_with:
        accelerator.log(values, step=step)
    bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)


def _progress_bar(accelerator: Accelerator, enabled: bool, start: int, total: int, desc: str = "pretrain"):  # noqa: ANN202
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, disable=not (enabled and accelerator.is_main_process), dynamic_ncols=True)


def _flat_hparams(config: PretrainConfig) -> dict[str, Any]:
    """TensorBoard hparams take scalars only."""
    flat = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


# --------------------------------------------------------------------------- command line
def pretrain_from_yaml(config_path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """`reasonclip pretrain CONFIG.yaml --key=value ...`: load, override, validate, train; returns final/."""
    from .config import load_config

    return pretrain(load_config(config_path, overrides))


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m reasonclip_llava.pretrain` (launch scripts, torchrun)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m reasonclip_llava.pretrain", description="Run one ReasonCLIP pretraining stage.")
    parser.add_argument("config", help="recipe YAML (train/stage1_b32.yaml, ...)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="--section.key=value or --key=value")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    args = parser.parse_args(argv)
    from safetensors import SafetensorError

    try:
        print(pretrain_from_yaml(args.config, args.overrides))
    except (OSError, ValueError, FloatingPointError, SafetensorError) as error:  # incl. a full disk, a refused output_dir
        print(f"pretrain: error: {error}", file=sys.stderr)
        return 2
    return 0
