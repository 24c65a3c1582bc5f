"""LLaVA training on transformers' Trainer: projector pretraining and instruction tuning (full or LoRA).

Three architectures (architectures.py): `llava_next` (anyres + spatial_unpad, train/llava_next_*.yaml),
`llava` (LLaVA-1.5: one tile, square/pad + flat; the recipe ReasonCLIP published,
train/llava_reasonclip_*.yaml) and `llava_onevision` (SigLIP, anyres_max_9 + spatial_unpad,
train/llava_onevision_*.yaml). `arch` picks one when building; a checkpoint brings its own.
One trainer, two stages as configs:
  stage A  mm_tunable_parts=mm_mlp_adapter, template plain, lr 1e-3   (tower and LM frozen)
  stage B  mm_tunable_parts=mm_mlp_adapter,mm_language_model[,mm_vision_tower], a chat template,
           LM lr 1e-5..2e-5 (or LoRA, lr 2e-4), mm_projector_lr, mm_vision_tower_lr.

Option names follow LLaVA / LLaVA-NeXT's train.py so their scripts translate line by line. DeepSpeed is
the Trainer's own integration (`deepspeed: train/zero3.json`). The model is loaded in full *before* the
TrainingArguments exist, so ZeRO-3 partitions complete tensors at engine start (LLaVA's size-0 tower
and lost-projector problems cannot happen). The output loads with plain
`LlavaNextForConditionalGeneration` / `LlavaForConditionalGeneration.from_pretrained`, vision tower
included, and the saved tower is checked against the trained one (tower_check.py); LoRA runs write the
adapter + `non_lora_trainables.safetensors`, which `merge.py` folds into such a checkpoint.

Launch: `deepspeed --num_gpus 8 --module reasonclip_llava.mllm_train.train CONFIG.yaml --key=value ...`
(or `reasonclip llava-train ...`, or `torchrun -m ...`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, ProcessorMixin, ProgressCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.utils import is_flash_attn_2_available
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from ..config_utils import LAUNCHER_KEYS, coerce, parse_overrides, read_yaml_mapping
from ..io_utils import claim_run_directory, is_main_launch_rank
from ..value_checks import check_max_length, check_ranges
from ..vlm.architectures import LlavaArchitecture, architecture_of, get_architecture
from ..vlm.build import build_llava
from ..vlm.hub_layout import to_hub_layout
from .checkpoints import (
    RUN_CONFIG_NAME, STAGING_DIR, check_checkpoint, check_run_output_dir, clear_output_dir, latest_checkpoint,
    write_checkpoint_atomically,
)
from .data import LONG_ROWS, LengthGroupedSampler, LlavaConversationDataset, LlavaDataCollator
from .templates import LABEL_MASKINGS
from ..vlm.tower_check import (
    require_saved_tower,
    saved_tower_state,
    side_file_tower_state,
    vision_tower_state,
    write_tower_check,
)

TUNABLE_PARTS = ("mm_mlp_adapter", "mm_vision_tower", "mm_language_model")
NON_LORA_TRAINABLES = "non_lora_trainables.safetensors"
TRAIN_CONFIG_NAME = RUN_CONFIG_NAME
TRAINING_ARGS_JSON = "training_args.json"  # instead of the Trainer's training_args.bin (a pickle of TrainingArguments)
PROJECTOR_KEYS = ("multi_modal_projector", "image_newline")
TOWER_KEYS = ("vision_tower",)
# Attention implementations whose transformers mask (or kernel) separates the samples of a packed row by
# their position_ids: a block-diagonal causal mask (sdpa, eager), a BlockMask (flex), varlen kernels (flash).
PACKED_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
# Numeric options with a meaningful range (None = not set); model_max_length is also checked against
# the LM's positions once the model is loaded, the select layer against the tower's layers in build.
VALUE_RANGES: tuple[tuple[str, str], ...] = (
    ("model_max_length", ">= 1"), ("dataloader_num_workers", ">= 0"), ("learning_rate", "> 0"),
    ("mm_projector_lr", "> 0"), ("mm_vision_tower_lr", "> 0"), ("weight_decay", ">= 0"), ("lora_r", ">= 1"),
    ("lora_alpha", "> 0"), ("lora_dropout", "[0, 1)"), ("num_train_epochs", "> 0"), ("per_device_train_batch_size", ">= 1"),
    ("gradient_accumulation_steps", ">= 1"), ("warmup_ratio", "[0, 1]"), ("max_grad_norm", ">= 0"), ("save_steps", ">= 1"),
    ("save_total_limit", ">= 1"), ("logging_steps", ">= 1"),
)


@dataclass
class LlavaTrainConfig:
    """Everything a LLaVA run needs. YAML keys and `--key=value` overrides use these names."""

    # model: an existing LlavaNext / Llava checkpoint, or build one from a causal LM and a CLIP/SigLIP encoder
    model_name_or_path: str | None = None
    arch: str | None = None  # llava_next (default) | llava | llava_onevision; a model_name_or_path checkpoint brings its own
    language_model: str | None = None
    vision_tower: str | None = None
    mm_vision_select_layer: int = -2
    mm_projector_type: str = "mlp2x_gelu"
    image_grid_pinpoints: str | list | None = None  # [[h, w], ...] or LLaVA-NeXT's "(1x1),...,(6x6)"; None = the arch's grid
    # data (LLaVA JSON/JSONL)
    data_path: str | None = None
    image_folder: str | None = None
    template: str = "plain"  # LLaVA's --version: plain, vicuna_v1, llama_3, qwen_1_5, mistral_instruct, auto
    label_masking: str = "answers"  # answers (ours) | llava_next (LLaVA-NeXT preprocess_qwen, see templates.py)
    image_aspect_ratio: str | None = None  # anyres (llava_next) | pad | square (llava) | anyres_max_9 (llava_onevision); None = the arch's default
    mm_patch_merge_type: str | None = None  # spatial_unpad (llava_next) | flat (llava); None = the arch's default
    model_max_length: int = 2048
    long_rows: str = "skip"  # rows over model_max_length, found before step 1: skip | error | truncate_text
    group_by_modality_length: bool = False
    packing: bool = False  # padding-free: each micro-batch is one row, document-masked attention (data.LlavaDataCollator)
    attn_implementation: str | None = None  # sdpa | flash_attention_2 | flex_attention | eager; None: see packing_attention
    dataloader_num_workers: int = 0
    # what trains, and how fast
    mm_tunable_parts: str = "mm_mlp_adapter"
    learning_rate: float = 1e-3
    mm_projector_lr: float | None = None
    mm_vision_tower_lr: float | None = None
    weight_decay: float = 0.0
    lora_enable: bool = False
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    # schedule, precision, parallelism
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    max_grad_norm: float = 1.0
    bf16: bool = False
    tf32: bool | None = None
    gradient_checkpointing: bool = False
    deepspeed: str | None = None
    seed: int = 42
    # output
    output_dir: str = "checkpoints/llava-next"
    save_steps: int = 500
    save_total_limit: int | None = 1
    logging_steps: int = 1
    resume_from_checkpoint: str | None = None  # a checkpoint dir, or "latest" for the last one in output_dir
    overwrite: bool = False  # replace what another run left in output_dir (else a non-empty output_dir is refused)
    report_to: str = "none"

    @property
    def tunable_parts(self) -> list[str]:
        return [part.strip() for part in self.mm_tunable_parts.split(",") if part.strip()]

    def architecture(self) -> LlavaArchitecture:
        """The checkpoint's own architecture for a local model_name_or_path, else `arch` (default llava_next)."""
        if self.model_name_or_path and (Path(self.model_name_or_path) / "config.json").is_file():
            found = architecture_of(self.model_name_or_path)
            if self.arch and self.arch != found.name:
                raise ValueError(f"arch {self.arch!r}: model_name_or_path {self.model_name_or_path} is a {found.name!r} checkpoint")
            return found
        return get_architecture(self.arch)

    def image_flags(self) -> tuple[str, str]:
        """(image_aspect_ratio, mm_patch_merge_type), defaults filled in; one-line error if the arch cannot do them."""
        return self.architecture().resolve_image_flags(self.image_aspect_ratio, self.mm_patch_merge_type)

    def validate(self) -> None:
        """Raise ValueError / FileNotFoundError naming the offending option."""
        if self.model_name_or_path and (self.language_model or self.vision_tower):
            raise ValueError("give model_name_or_path (a LlavaNext checkpoint) or language_model + vision_tower, not both")
        if not self.model_name_or_path and not (self.language_model and self.vision_tower):
            raise ValueError("model_name_or_path, or both language_model and vision_tower, must be set")
        if self.mm_projector_type != "mlp2x_gelu":
            raise ValueError(f"mm_projector_type {self.mm_projector_type!r}: LlavaNext / Llava support mlp2x_gelu only")
        parts = self.tunable_parts
        if not parts:
            raise ValueError("mm_tunable_parts is empty; name at least one of " + ", ".join(TUNABLE_PARTS))
        for part in parts:
            if part not in TUNABLE_PARTS:
                raise ValueError(f"mm_tunable_parts: unknown part {part!r}; valid: {', '.join(TUNABLE_PARTS)}")
        self.image_flags()
        self.architecture().check_available()
        if self.label_masking not in LABEL_MASKINGS:
            raise ValueError(f"label_masking {self.label_masking!r}: expected one of {', '.join(LABEL_MASKINGS)}")
        if self.long_rows not in LONG_ROWS:
            raise ValueError(f"long_rows {self.long_rows!r}: expected one of {', '.join(LONG_ROWS)}")
        if self.attn_implementation is not None and self.attn_implementation not in PACKED_ATTENTION:
            raise ValueError(f"attn_implementation {self.attn_implementation!r}: expected one of {', '.join(PACKED_ATTENTION)}")
        if self.lora_enable and "mm_language_model" not in parts:
            raise ValueError("lora_enable trains the language model through LoRA: add mm_language_model to mm_tunable_parts")
        for name in ("data_path", "deepspeed"):
            path = getattr(self, name)
            if name == "data_path" and not path:
                raise ValueError("data_path must be set (a LLaVA JSON/JSONL file)")
            if path and not Path(path).is_file():
                raise FileNotFoundError(f"{name}: file not found: {path}")
        if self.image_folder and not Path(self.image_folder).is_dir():
            raise FileNotFoundError(f"image_folder: directory not found: {self.image_folder}")
        check_ranges(dataclasses.asdict(self), VALUE_RANGES)
        if self.max_steps != -1 and self.max_steps < 1:
            raise ValueError(f"config key 'max_steps' must be -1 (use num_train_epochs) or >= 1 (got {self.max_steps})")


# ---- config loading -------------------------------------------------------------------------------

_TYPE_HINTS = typing.get_type_hints(LlavaTrainConfig)


def config_from_dict(values: dict[str, Any]) -> LlavaTrainConfig:
    """Build a config; an unknown key raises ValueError naming it."""
    known = {f.name for f in dataclasses.fields(LlavaTrainConfig)}
    kwargs = {}
    for key, value in values.items():
        if key in LAUNCHER_KEYS:
            continue
        if key not in known:
            raise ValueError(f"unknown config key {key!r}")
        kwargs[key] = coerce(value, _TYPE_HINTS[key], key)
    return LlavaTrainConfig(**kwargs)


def load_train_config(path: str | Path | None = None, overrides: Sequence[str] | dict[str, Any] = ()) -> LlavaTrainConfig:
    """YAML recipe (optional) + overrides (a dict, or `--key=value` strings) -> LlavaTrainConfig."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_yaml_mapping(path, "training config"))
    values.update(overrides if isinstance(overrides, dict) else dict(parse_overrides(overrides)))
    return config_from_dict(values)


def save_train_config(config: LlavaTrainConfig, out_dir: str | Path) -> Path:
    path = Path(out_dir) / TRAIN_CONFIG_NAME
    path.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    return path


# ---- model: load/build, freeze, LoRA -------------------------------------------------------------------

def load_model(config: LlavaTrainConfig) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The full, unpartitioned model (bf16 weights under DeepSpeed bf16, as LLaVA; else fp32 master weights),
    and its processor set for the run's image_aspect_ratio (so the saved processor serves as it trained)."""
    dtype = torch.bfloat16 if (config.bf16 and config.deepspeed) else torch.float32
    architecture = config.architecture()
    aspect, merge = config.image_flags()
    if config.model_name_or_path:
        model, processor = architecture.load(config.model_name_or_path, dtype=dtype, what="model_name_or_path")
    else:
        model, processor = build_llava(
            config.language_model,
            config.vision_tower,
            arch=architecture.name,
            image_aspect_ratio=aspect,
            mm_patch_merge_type=merge,
            image_grid_pinpoints=config.image_grid_pinpoints,
            vision_feature_layer=config.mm_vision_select_layer,
            torch_dtype=dtype,
        )
    architecture.set_image_aspect_ratio(processor, aspect)
    return model, processor


def part_of(name: str) -> str:
    """Which LLaVA part a parameter name belongs to: mm_mlp_adapter, mm_vision_tower or mm_language_model."""
    if any(key in name for key in PROJECTOR_KEYS):
        return "mm_mlp_adapter"
    if any(key in name for key in TOWER_KEYS):
        return "mm_vision_tower"
    return "mm_language_model"


def set_tunable_parts(model: torch.nn.Module, parts: Sequence[str], lora: bool = False) -> None:
    """requires_grad = True exactly for the named parts (with LoRA, the LM trains only via its adapters)."""
    for name, parameter in model.named_parameters():
        part = part_of(name)
        if lora and part == "mm_language_model":
            parameter.requires_grad_("lora_" in name)
        else:
            parameter.requires_grad_(part in parts)


def lora_target_regex(model: PreTrainedModel) -> str:
    """A regex (peft fullmatch) for every nn.Linear inside the LM; never the tower, projector or lm_head."""
    leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.model.language_model.named_modules()
                     if isinstance(module, torch.nn.Linear)})
    return rf".*language_model\..*\.({'|'.join(leaves)})"


def add_lora(model: PreTrainedModel, config: LlavaTrainConfig):
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_regex(model),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)


def is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def strip_peft_prefix(name: str) -> str:
    return name.removeprefix("base_model.model.")


def uses_cpu_offload(deepspeed_config: str | None) -> bool:
    if not deepspeed_config:
        return False
    zero = json.loads(Path(deepspeed_config).read_text()).get("zero_optimization", {})
    return zero.get("offload_optimizer", {}).get("device") == "cpu"


def packing_attention(config: LlavaTrainConfig) -> str | None:
    """The attention to train with: `attn_implementation` if set; with packing on a GPU, bf16 and flash-attn
    installed, flash_attention_2 (variable-length kernels, no mask); otherwise None = the model's own (SDPA,
    which transformers gives a block-diagonal mask built from the packed position_ids)."""
    if config.attn_implementation is not None:
        return config.attn_implementation
    if config.packing and config.bf16 and torch.cuda.is_available() and is_flash_attn_2_available():
        return "flash_attention_2"
    return None


# ---- trainer --------------------------------------------------------------------------------------------

class DataSummary(TrainerCallback, ExportableState):
    """The length pre-pass's summary (rows, over-length rows and what became of them), kept in trainer_state.json."""

    def __init__(self, summary: dict | None = None) -> None:
        self.summary = dict(summary or {})

    def state(self) -> dict:
        return {"args": {"summary": self.summary}, "attributes": {}}


class LossInProgressBar(ProgressCallback):
    """Trainer's tqdm bar with the latest loss beside it, instead of one printed dict per logging step."""

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:  # noqa: ANN001
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)


class LlavaTrainer(Trainer):
    """Trainer + per-part learning rates, modality-grouped batches, LoRA side weights in every save."""

    def __init__(self, *args, llava_config: LlavaTrainConfig, **kwargs) -> None:
        self.llava_config = llava_config
        self.checkpoint_root: Path | None = None  # set while a checkpoint is written into the staging dir
        super().__init__(*args, **kwargs)

    def _get_output_dir(self, trial) -> str:
        return str(self.checkpoint_root) if self.checkpoint_root is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        # Written to output_dir/.staging and renamed: a kill mid-save never leaves a half checkpoint-N.
        write_checkpoint_atomically(self, lambda: super(LlavaTrainer, self)._save_checkpoint(model, trial))

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """AdamW over parameter groups: LM at learning_rate, projector at mm_projector_lr, tower at
        mm_vision_tower_lr, each split into weight-decay / no-decay."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        config = self.llava_config
        part_lr = {
            "mm_language_model": config.learning_rate,
            "mm_mlp_adapter": config.mm_projector_lr if config.mm_projector_lr is not None else config.learning_rate,
            "mm_vision_tower": config.mm_vision_tower_lr if config.mm_vision_tower_lr is not None else config.learning_rate,
        }
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
        for name, parameter in opt_model.named_parameters():
            if parameter.requires_grad:
                groups.setdefault((part_of(name), name in decay), []).append(parameter)
        param_groups = [
            {"params": params, "lr": part_lr[part], "weight_decay": self.args.weight_decay if decayed else 0.0,
             "name": f"{part}{'' if decayed else '_no_decay'}"}
            for (part, decayed), params in sorted(groups.items())
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        if uses_cpu_offload(config.deepspeed):
            # ZeRO-Offload wants DeepSpeed's CPU Adam; it keeps per-group learning rates.
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer_cls = DeepSpeedCPUAdam
            optimizer_kwargs = {key: optimizer_kwargs[key] for key in ("betas", "eps") if key in optimizer_kwargs}
        self.optimizer = optimizer_cls(param_groups, lr=config.learning_rate, **optimizer_kwargs)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        if not self.llava_config.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # As LLaVA: megabatches of world_size * grad_accum batches, so each optimizer step is one modality.
        return LengthGroupedSampler(
            dataset.modality_lengths,
            batch_size=self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            group_by_modality=True,
            seed=self.args.seed,
        )

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        save_train_config(self.llava_config, output_dir)  # every checkpoint-N is self-describing (merge, resume)
        pickled_args = Path(output_dir) / "training_args.bin"
        if pickled_args.is_file():  # nothing reads it back; as JSON it can never carry code
            pickled_args.unlink()
            (Path(output_dir) / TRAINING_ARGS_JSON).write_text(self.args.to_json_string())
        if is_peft(self.model):
            save_non_lora_trainables(self.model, output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.model if model is None else model
        if is_peft(model):
            super()._load_from_checkpoint(resume_from_checkpoint, model=model)  # the adapter
            side = Path(resume_from_checkpoint) / NON_LORA_TRAINABLES
            if side.is_file():
                load_non_lora_trainables(model, side)
            return
        # transformers 5 saves LlavaNext under its legacy key names (language_model.model.*, ...) and the
        # Trainer's own resume loads them with strict=False, i.e. silently not at all. from_pretrained
        # knows the renaming; copy its tensors in, strictly.
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype)
        model.load_state_dict(saved.state_dict(), strict=True)
        del saved


def save_non_lora_trainables(model, output_dir: str | Path, state_dict: dict | None = None) -> Path | None:
    """LoRA runs: projector / image_newline / tower tensors that trained outside the adapters (LLaVA's file)."""
    trainable = {strip_peft_prefix(name) for name, p in model.named_parameters() if p.requires_grad and "lora_" not in name}
    source = state_dict if state_dict else model.state_dict()
    tensors = {strip_peft_prefix(name): tensor.detach().cpu().contiguous() for name, tensor in source.items()
               if strip_peft_prefix(name) in trainable}
    if not tensors:
        return None
    path = Path(output_dir) / NON_LORA_TRAINABLES
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def load_non_lora_trainables(model, path: str | Path) -> None:
    """Copy the side weights into a plain LlavaNext or into the base of a PeftModel."""
    tensors = load_file(str(path))
    target = model.get_base_model() if is_peft(model) else model
    missing = set(tensors) - set(target.state_dict())
    if missing:
        raise ValueError(f"{path}: tensors {sorted(missing)[:3]} do not belong to this model")
    with torch.no_grad():
        state = target.state_dict()
        for name, tensor in tensors.items():
            state[name].copy_(tensor)


def training_arguments(config: LlavaTrainConfig) -> TrainingArguments:
    return TrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_ratio,  # < 1 is a ratio in transformers 5
        lr_scheduler_type=config.lr_scheduler_type,
        max_grad_norm=config.max_grad_norm,
        bf16=config.bf16,
        tf32=config.tf32,
        activation_checkpointing=config.gradient_checkpointing,
        # non-reentrant: frozen embeddings (stage A, LoRA) would otherwise cut the gradient path
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        deepspeed=config.deepspeed,
        seed=config.seed,
        data_seed=config.seed,  # the shuffle order is a function of the seed alone: resume replays it exactly
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        disable_tqdm=False,  # a bar per stage (LossInProgressBar) whatever the log level; else a printed dict per log step
        report_to=config.report_to,
        dataloader_num_workers=config.dataloader_num_workers,
        remove_unused_columns=False,  # the collator needs pixel_values / image_sizes
        optim="adamw_torch",
        use_cpu=not torch.cuda.is_available(),
    )


def resume_argument(config: LlavaTrainConfig) -> str | None:
    """The checkpoint to resume: "latest" is the newest complete, readable one in output_dir (None: start fresh)."""
    value = config.resume_from_checkpoint
    if value is None:
        return None
    if value.lower() in ("latest", "true", "last"):
        latest = latest_checkpoint(config.output_dir)
        return str(latest) if latest is not None else None
    if not Path(value).is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint: checkpoint not found: {value}")
    check_checkpoint(Path(value))
    return value


def build_trainer(config: LlavaTrainConfig) -> LlavaTrainer:
    """Model (loaded in full), frozen/LoRA parts, dataset, collator and TrainingArguments, in that order."""
    config.validate()
    unset_hf_deepspeed_config()  # build the full model first: no zero.Init partitioning at load time
    model, processor = load_model(config)
    check_max_length(config.model_max_length, getattr(model.config.text_config, "max_position_embeddings", None),
                     "model_max_length", "the language model")
    model.config.use_cache = False
    attention = packing_attention(config)
    if attention is not None:
        model.set_attn_implementation(attention)
    parts = config.tunable_parts
    set_tunable_parts(model, parts)
    if config.lora_enable:
        model = add_lora(model, config)
        set_tunable_parts(model, parts, lora=True)

    dataset = LlavaConversationDataset(
        config.data_path, config.image_folder, processor, config.template,
        config.model_max_length, image_aspect_ratio=config.image_flags()[0], label_masking=config.label_masking,
        long_rows=config.long_rows,
    )
    trainer = LlavaTrainer(
        model=model,
        args=training_arguments(config),
        train_dataset=dataset,
        data_collator=LlavaDataCollator(pad_token_id=processor.tokenizer.pad_token_id, packing=config.packing),
        processing_class=processor,
        llava_config=config,
    )
    trainer.pop_callback(ProgressCallback)
    trainer.add_callback(LossInProgressBar)
    trainer.add_callback(DataSummary(dataset.length_summary.as_dict()))
    return trainer


def train_llava(config: LlavaTrainConfig) -> Path:
    """Run one stage; return output_dir (a plain LlavaNext / Llava checkpoint, or LoRA adapter + side weights).

    output_dir also gets trainer_state.json (loss history), the resolved config (TRAIN_CONFIG_NAME) and the
    tower check (tower_check.TOWER_CHECK_NAME); a saved tower that is not the trained one raises.
    output_dir is claimed for the run and follows pretraining's rules (checkpoints.check_run_output_dir):
    another run's files are refused unless `overwrite`, continuing one's own run is `resume_from_checkpoint`.
    """
    config.validate()
    main_rank = is_main_launch_rank()
    with claim_run_directory(config.output_dir, enabled=main_rank):  # a second run into output_dir is refused
        resume = resume_argument(config)  # every file of the checkpoint checked, nothing loaded yet
        check_run_output_dir(config, Path(resume) if resume else None)
        if main_rank:
            if config.overwrite and resume is None:
                clear_output_dir(config.output_dir)
            shutil.rmtree(Path(config.output_dir) / STAGING_DIR, ignore_errors=True)  # a killed run's half checkpoint
        return _train(config, resume)


def _train(config: LlavaTrainConfig, resume: str | None) -> Path:
    trainer = build_trainer(config)
    result = trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        summary = trainer.train_dataset.length_summary
        rows = f"{len(trainer.train_dataset)} rows" + (
            f" ({summary.skipped} over model_max_length skipped, {summary.truncated} truncated)"
            if summary.over_length else "")
        print(f"{config.output_dir}: {result.global_step} steps, {rows}, mean loss {result.training_loss:.4f}, "
              f"{result.metrics.get('train_runtime', 0.0):.0f} s")
    model = trainer.model
    (model.get_base_model() if is_peft(model) else model).config.use_cache = True
    trainer.save_model(config.output_dir)
    if trainer.args.should_save:
        to_hub_layout(model, config.output_dir)  # the final model in the Hub layout; checkpoint-N stay as written
    trainer.save_state()
    check_saved_tower(trainer, config.output_dir)
    return Path(config.output_dir)


def check_saved_tower(trainer: Trainer, output_dir: str | Path) -> dict | None:
    """Read the tower back from output_dir and require it to be, bitwise, the trained one, and finite.

    LoRA runs save the tower only when it trained (in non_lora_trainables); a frozen one comes from the
    base at merge time and is checked there. Every rank gathers (ZeRO-3); the main process compares.
    """
    trained = vision_tower_state(trainer.model)  # collective under ZeRO-3
    if not trainer.args.should_save:
        return None
    output_dir = Path(output_dir)
    if is_peft(trainer.model):
        side = output_dir / NON_LORA_TRAINABLES
        saved = side_file_tower_state(load_file(str(side))) if side.is_file() else {}
        if not saved:
            report = {"saved": False, "reason": "frozen tower: not in the LoRA output; checked at merge"}
            write_tower_check(report, output_dir)
            return report
    else:
        saved = saved_tower_state(output_dir, dtype=next(iter(trained.values())).dtype)
    report = {"saved": True, **require_saved_tower(trained, saved, output_dir)}
    write_tower_check(report, output_dir)
    return report


def main(argv: Sequence[str] | None = None) -> Path:
    """`python -m reasonclip_llava.mllm_train.train CONFIG.yaml [--key=value ...]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The deepspeed launcher puts --local_rank=N before the script's own arguments.
    while argv and argv[0].startswith("--local_rank"):
        argv = argv[1:] if "=" in argv[0] else argv[2:]
    path = argv.pop(0) if argv and not argv[0].startswith("--") else None
    return train_llava(load_train_config(path, argv))


if __name__ == "__main__":
    main()
