"""The pretraining config: one typed dataclass, loaded from a YAML recipe plus `--key=value` overrides.

A recipe has six sections (model, data, stage, optim, schedule, runtime); every key is a typed field
below, so a typo or a wrong type fails at load time with one line naming the key:

    unknown config key 'optim.lr_vison'
    config key 'optim.lr' expects float, got 'fast'

Overrides are `--section.key=value` or, when the field name is unique across sections, `--key=value`
(`--lr=1e-5`, `--deepspeed=train/ds_zero2_pretrain.json`). Each value is read as the field's type
(`--optim.lr=1e-5` is a float; `--runtime.mixed_precision=no` stays the string "no", which YAML 1.1 would
read as false); recipe values go through the same conversion after YAML.

The stage decides which objective terms are active (see `trainer.compute_loss`):

    stage0  contrastive on one caption stream (stage.captions: descriptive = tb, of ReasonLite or
            CC12M-Refined; reasoning = trl, and trp of a ReasonPro source; or the data.caption_columns
            pool), optionally with stage.hard_negatives swap negatives per caption
    stage1  w(t) * CLIP(img, desc) + (1 - w(t)) * CLIP(img, reason) + beta * ||theta - theta0||^2
    stage2  CLIP(img, reason) + gamma * [CE(text head) + BCE(image head)]
    read    hard-negative CLIP (k negatives) + recon_weight * T5 reconstruction + align_weight * paraphrase
            alignment

SigLIP backbones use the sigmoid loss wherever the contrastive loss appears (stage.contrastive=auto).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ..data.datasets import SAMPLE_MODES
from ..config_utils import coerce, parse_overrides, read_yaml_mapping  # noqa: F401  (parse_overrides is part of this module's API)
from ..value_checks import check_ranges

STAGES = ("stage0", "stage1", "stage2", "read")
NEGATIVES = ("distinct", "read")
PRECISIONS = ("fp32_master", "authors_bf16")
FINAL_WEIGHTS = ("last", "best")
CAPTION_STREAMS = ("descriptive", "reasoning")
MIXED_PRECISION = ("no", "bf16", "fp16")
SAMPLERS = ("random", "distinct_images")
LOGIT_SCALE_MAX = math.log(50.0)


@dataclass
class ModelConfig:
    # A Hub id or a local dir: a plain CLIP/SigLIP checkpoint or a ReasonCLIP training checkpoint.
    name_or_path: str = ""
    tokenizer: str | None = None  # default: name_or_path
    gradient_checkpointing: bool = False
    # none | regional | step (true = regional, false = none), see pretrain/speed.py. regional: each
    # transformer layer compiled in place (the layer class compiles once and is reused; state_dict keys and
    # checkpoints unchanged; the frozen T5 decoder's too). step: the whole forward + loss (+ its backward).
    torch_compile: str | bool = "none"
    attention: str = "sdpa"  # SDPA backend: sdpa (PyTorch's choice) | cudnn | flash | auto (see pretrain/speed.py)
    # Lowercase every caption before tokenizing. null: only for SigLIP 2 (the authors lowercase when
    # "siglip2" is in the model name; SigLIP 2's Gemma tokenizer is case-sensitive and was trained so).
    lowercase_text: bool | None = None


@dataclass
class DataConfig:
    # A parquet file or a dir of them (ReasonLite/ReasonPro layout), a .jsonl file, or webdataset shards
    # (.tar, a brace pattern, or a dir of .tar).
    train: str = ""
    format: str = "auto"  # auto | parquet | jsonl | webdataset
    image_root: str = ""  # where relative image_path values point; default: beside the data
    batch_size: int = 32  # per device
    # When set, the batch of one optimizer step over all devices (READ: 256): batch_size becomes
    # global_batch_size / (world size x gradient accumulation), which must divide evenly.
    global_batch_size: int | None = None
    num_workers: int = 0
    max_length: int = 77
    # Caption columns pooled per image by READ (default ["captions"]) and by stage 0 when given (default:
    # tb for stage.captions=descriptive; trl, or trp in a ReasonPro source, for reasoning).
    caption_columns: list[str] = field(default_factory=list)
    # More sources read together with `train` and shuffled with it, each in its own schema (found from its
    # columns), e.g. stage 0 reasoning = ReasonLite trl + ReasonPro trp ("ReasonCLIP-58M"). Map-style only.
    sources: list[str] = field(default_factory=list)
    # How captions become samples: all_pairs (published: every (tb, trl) pair its own sample in stage 1,
    # every caption in stage 0: 9x / 3x the rows per epoch) | per_image (one pair per image and epoch,
    # cycling through the pairs over epochs).
    samples: str = "per_image"
    # random | distinct_images (no image twice in one global batch = batch_size x world size; the
    # published shuffle can put two pairs of an image together, each the other's false negative).
    sampler: str = "random"
    # Rows held out of every source by a seeded split (published: 0.002, seed 42, as datasets'
    # train_test_split draws it); their loss is evaluated every `eval_every` (< 1: a fraction of the
    # optimizer steps, published 0.25; >= 1: steps) and the best checkpoint is kept as best/.
    holdout_ratio: float = 0.0
    holdout_seed: int = 42
    eval_every: float = 0.25
    # READ's LLM paraphrases (READ-CLIP's data/zero.json: {image id: [paraphrase, ...]}), a file you supply;
    # the alignment term then draws its paraphrase from the image's other captions plus these, as READ does.
    # Rows find their entry by cocoid, id, or the number ending their image file name. null: other captions only.
    paraphrases: str | None = None


@dataclass
class StageConfig:
    name: str = "stage1"  # stage0 | stage1 | stage2 | read
    captions: str = "descriptive"  # stage0 only: descriptive | reasoning
    contrastive: str = "auto"  # auto (CLIP -> softmax, SigLIP -> sigmoid) | clip | siglip
    # w(t) for stage 1: [w_start, p_hold, w_mid, p_ramp_end, w_final] (p = step / max_steps):
    # w_start while p <= p_hold, linear to w_mid at p_ramp_end, then w_final.
    w_schedule: list[float] = field(default_factory=lambda: [0.70, 0.2, 0.50, 0.8, 0.60])
    anchor_beta: float = 1e-5  # stage 1 L2 anchor on the vision/text transformer weights
    category_gamma: float = 0.05  # stage 2 category heads
    hard_negatives: int = 0  # k swap negatives per caption (read: 3); also usable in stage 0
    # How the k negatives are drawn (data/hard_negatives.py): distinct (k distinct negatives: swaps, then
    # relation / colour / size replacements, then a fallback) | read (READ's sampler: noun / adj / adv /
    # 3+-token noun chunk / verb phrase swaps only, k independent picks that may repeat, '' when none exists).
    negatives: str = "distinct"
    recon_weight: float = 0.1  # read: T5 reconstruction (0 disables it and skips loading T5)
    align_weight: float = 0.5  # read: paraphrase alignment (0 disables it)
    t5_model: str = "google/t5-v1_1-large"  # the frozen decoder (id or path)
    # The reconstruction target's tokenizer (default: t5_model's). READ's collator uses google/flan-t5-xl,
    # the same SentencePiece vocabulary as T5-v1.1.
    t5_tokenizer: str | None = None
    # The frozen T5 decoder with its dropout active, as in the READ run (its Trainer puts the whole model,
    # decoder included, in train mode); false: eval mode, a deterministic reconstruction loss.
    t5_dropout: bool = False
    # read: the reconstruction target. any: a caption of the image drawn from all of them, the anchor
    # included (READ's collator); other: a caption other than the anchor.
    recon_target: str = "any"


@dataclass
class ParamGroupConfig:
    """One AdamW parameter group, selected by name as the authors' code selects it.

    A parameter joins the first group of `optim.groups` one of whose `match` substrings its name
    contains (e.g. "vision_model."); lr / weight_decay null take optim.lr / optim.weight_decay.
    """

    name: str = ""
    match: list[str] = field(default_factory=list)
    lr: float | None = None
    weight_decay: float | None = None


NO_DECAY_RULES = ("none", "bias_and_norm", "1d")


@dataclass
class OptimConfig:
    # AdamW. The defaults are the published ReasonCLIP values (ft_clip_r_*.py): betas (0.9, 0.999),
    # eps 1e-8, gradient clipping 1.0; see pretrain/optim.py for how groups are built.
    lr: float = 1e-4  # the main lr: the default group (every parameter no group matches)
    weight_decay: float = 0.05  # the default group's weight decay (and a group's whose weight_decay is null)
    # The recipe's groups, first match wins. null: vision_model. / text_model. / logit_scale / heads
    # groups at the lr_* values below (each null: optim.lr).
    groups: list[ParamGroupConfig] | None = None
    lr_vision: float | None = None
    lr_text: float | None = None
    lr_logit_scale: float | None = None
    lr_heads: float | None = None
    # Which parameters skip their group's weight decay: none (ReasonCLIP), bias_and_norm (READ / the HF
    # Trainer: biases and LayerNorm), 1d (open_clip: every tensor of fewer than 2 dimensions).
    no_decay: str = "none"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    # log-temperature clamp after every step and inside the loss; the published runs clamp at ln 50 for
    # CLIP and SigLIP alike (null: no clamp)
    logit_scale_max: float | None = LOGIT_SCALE_MAX


LEGACY_GROUP_KEYS = ("lr_vision", "lr_text", "lr_logit_scale", "lr_heads")


def resolved_param_groups(optim: OptimConfig) -> list[ParamGroupConfig]:
    """optim.groups, or (when null) the named groups of the per-group lr keys, in the authors' order."""
    if optim.groups is not None:
        return optim.groups
    return [
        ParamGroupConfig("vision", ["vision_model."], optim.lr_vision),
        ParamGroupConfig("text", ["text_model."], optim.lr_text),
        ParamGroupConfig("logit_scale", ["logit_scale"], optim.lr_logit_scale, 0.0),
        ParamGroupConfig("heads", ["category_heads.", "recon_projector."], optim.lr_heads),
    ]


@dataclass
class ScheduleConfig:
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    warmup_steps: int | None = None  # overrides warmup_ratio
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"  # cosine | constant


@dataclass
class RuntimeConfig:
    output_dir: str = ""
    seed: int = 0
    mixed_precision: str = "no"  # no (fp32) | bf16 | fp16
    # Where the weights and AdamW state live (pretrain/precision.py): fp32_master (fp32 weights and state, the
    # compute under mixed_precision's autocast) | authors_bf16 (weights and AdamW state in bf16, as the
    # ReasonCLIP runs load the model: updates below half a bf16 step round away; needs mixed_precision bf16).
    precision: str = "fp32_master"
    gradient_accumulation_steps: int = 1
    deepspeed: str | None = None  # DeepSpeed JSON; ZeRO-2 recommended (the L2 anchor needs full params)
    save_every: int = 1000  # optimizer steps between checkpoints (0: only the final one)
    keep_last: int | None = 3  # checkpoints kept; None keeps all
    resume_from: str | None = None  # a checkpoint dir or "latest"
    # A fresh run into an output_dir holding another run is refused unless this is set; the old run's
    # checkpoints, final/ and logs are then removed first (nothing of it is mixed with the new one).
    overwrite: bool = False
    log_every: int = 10
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard, wandb, or []
    progress_bar: bool = True
    recipe: str = ""  # filled in with the YAML path; recorded in the checkpoint's provenance
    fp8: str = "none"  # none | tensorwise | rowwise: torchao float8 linears in the image tower (pretrain/speed.py)
    # What final/ holds: last (the last step's weights) | best (the lowest held-out loss, the authors' exported
    # result, best_model_dir; the last step's weights then go to last/). Needs data.holdout_ratio > 0.
    final_weights: str = "last"


# Numeric keys with a meaningful range (checked at load; None = not set). data.max_length is also
# checked against the model's text positions when the model is loaded (trainer.check_against_model).
VALUE_RANGES: tuple[tuple[str, str], ...] = (
    ("data.num_workers", ">= 0"), ("data.max_length", ">= 1"),
    ("stage.anchor_beta", ">= 0"), ("stage.category_gamma", ">= 0"), ("stage.recon_weight", ">= 0"),
    ("stage.align_weight", ">= 0"), ("stage.w_schedule", "[0, 1]"),
    ("optim.lr", "> 0"), ("optim.lr_vision", "> 0"), ("optim.lr_text", "> 0"), ("optim.lr_logit_scale", "> 0"),
    ("optim.lr_heads", "> 0"), ("optim.weight_decay", ">= 0"), ("optim.betas", "[0, 1)"), ("optim.eps", "> 0"),
    ("optim.max_grad_norm", "> 0"),
    ("schedule.epochs", "> 0"), ("schedule.max_steps", ">= 1"), ("schedule.warmup_steps", ">= 0"), ("schedule.warmup_ratio", "[0, 1]"),
    ("runtime.save_every", ">= 0"), ("runtime.keep_last", ">= 0"), ("runtime.log_every", ">= 1"),
)


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "PretrainConfig":
        """Check values that a type alone cannot; raise ValueError naming the key."""
        checks = [
            ("model.name_or_path", bool(self.model.name_or_path), "is required"),
            ("data.train", bool(self.data.train), "is required"),
            ("runtime.output_dir", bool(self.runtime.output_dir), "is required"),
            ("stage.name", self.stage.name in STAGES, f"must be one of {STAGES}"),
            ("stage.captions", self.stage.captions in CAPTION_STREAMS, f"must be one of {CAPTION_STREAMS}"),
            ("stage.contrastive", self.stage.contrastive in ("auto", "clip", "siglip"), "must be auto, clip or siglip"),
            ("stage.hard_negatives", self.stage.hard_negatives >= 0, "must be >= 0"),
            ("stage.recon_target", self.stage.recon_target in ("any", "other"), "must be any or other"),
            ("stage.negatives", self.stage.negatives in NEGATIVES, f"must be one of {NEGATIVES}"),
            ("data.paraphrases", not self.data.paraphrases or (self.stage.name == "read" and self.stage.align_weight > 0),
             "is read by the READ alignment term only (stage.name=read, stage.align_weight > 0)"),
            ("data.format", self.data.format in ("auto", "parquet", "jsonl", "webdataset"), "must be auto, parquet, jsonl or webdataset"),
            ("data.batch_size", self.data.batch_size > 0, "must be > 0"),
            ("data.samples", self.data.samples in SAMPLE_MODES, f"must be one of {SAMPLE_MODES}"),
            ("data.sampler", self.data.sampler in SAMPLERS, f"must be one of {SAMPLERS}"),
            ("data.holdout_ratio", 0.0 <= self.data.holdout_ratio < 1.0, "must be in [0, 1)"),
            ("data.eval_every", self.data.eval_every > 0 and (self.data.eval_every < 1 or float(self.data.eval_every).is_integer()),
             "must be a fraction of the run in (0, 1) or a whole number of steps"),
            ("optim.betas", len(self.optim.betas) == 2, "must be two numbers"),
            ("optim.no_decay", self.optim.no_decay in NO_DECAY_RULES, f"must be one of {NO_DECAY_RULES}"),
            ("schedule.scheduler", self.schedule.scheduler in ("cosine", "constant"), "must be cosine or constant"),
            ("runtime.mixed_precision", self.runtime.mixed_precision in MIXED_PRECISION, f"must be one of {MIXED_PRECISION}"),
            ("runtime.gradient_accumulation_steps", self.runtime.gradient_accumulation_steps >= 1, "must be >= 1"),
            ("runtime.precision", self.runtime.precision in PRECISIONS, f"must be one of {PRECISIONS}"),
            ("runtime.precision", self.runtime.precision != "authors_bf16" or self.runtime.mixed_precision == "bf16",
             "authors_bf16 runs under bf16 autocast as the authors did: set runtime.mixed_precision=bf16"),
            ("runtime.precision", self.runtime.precision != "authors_bf16" or not self.runtime.deepspeed,
             "authors_bf16 cannot run under DeepSpeed, whose bf16 mode keeps fp32 master weights (the authors ran DDP)"),
            ("runtime.final_weights", self.runtime.final_weights in FINAL_WEIGHTS, f"must be one of {FINAL_WEIGHTS}"),
            ("runtime.final_weights", self.runtime.final_weights != "best" or self.data.holdout_ratio > 0,
             "best needs held-out rows to judge by: set data.holdout_ratio > 0"),
        ]
        w = self.stage.w_schedule
        checks.append(("stage.w_schedule", len(w) == 5 and 0.0 <= w[1] <= w[3] <= 1.0,
                       "must be [w_start, p_hold, w_mid, p_ramp_end, w_final] with 0 <= p_hold <= p_ramp_end <= 1"))
        for key, ok, message in checks:
            if not ok:
                raise ValueError(f"config key '{key}' {message} (got {_get(self, key)!r})")
        check_ranges({key: _get(self, key) for key, _ in VALUE_RANGES}, VALUE_RANGES)
        if self.optim.groups is not None:
            legacy = [f"optim.{k}" for k in LEGACY_GROUP_KEYS if getattr(self.optim, k) is not None]
            if legacy:
                raise ValueError(f"config keys {legacy} cannot be combined with 'optim.groups': set each group's lr there")
            names = [g.name for g in self.optim.groups]
            for index, group in enumerate(self.optim.groups):
                if not group.name or not group.match or names.count(group.name) > 1:
                    raise ValueError(f"config key 'optim.groups' entry {index} needs a unique name and a non-empty match list (got {dataclasses.asdict(group)})")
        if self.stage.name == "read" and self.stage.hard_negatives < 1:
            raise ValueError("config key 'stage.hard_negatives' must be >= 1 for stage 'read'")
        from .speed import check_speed_options  # torch-importing; config.py stays light

        check_speed_options(self)
        return self


def apply_global_batch(config: PretrainConfig, world_size: int) -> None:
    """Set data.batch_size from data.global_batch_size for this world size (no-op when it is null)."""
    total = config.data.global_batch_size
    if total is None:
        return
    share = world_size * config.runtime.gradient_accumulation_steps
    if total < 1 or total % share:
        raise ValueError(f"config key 'data.global_batch_size': {total} does not split into {world_size} device(s) x "
                         f"{config.runtime.gradient_accumulation_steps} accumulation step(s)")
    config.data.batch_size = total // share


def global_batch(config: PretrainConfig, world_size: int) -> int:
    """Samples per optimizer step over all devices."""
    return config.data.batch_size * world_size * config.runtime.gradient_accumulation_steps


# --------------------------------------------------------------------------- loading
def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Read a YAML recipe (or start from defaults), apply `--key=value` overrides, validate."""
    config = PretrainConfig()
    if path is not None:
        raw = read_yaml_mapping(path, "recipe")
        for section, values in raw.items():
            if section not in _sections():
                raise ValueError(f"unknown config key '{section}'")
            if not isinstance(values, dict):
                raise ValueError(f"config section '{section}' must be a mapping")
            for key, value in values.items():
                set_value(config, f"{section}.{key}", value)
        config.runtime.recipe = str(path)
    for key, value in parse_overrides(overrides):
        set_value(config, resolve_key(key), value)  # coerce() reads the string as the field's type ('no' stays 'no')
    return config.validate()


def resolve_key(key: str) -> str:
    """A dotted key stays; a bare field name maps to its section when it is unique."""
    if "." in key:
        return key
    owners = [section for section, cls in _sections().items() if key in {f.name for f in dataclasses.fields(cls)}]
    if len(owners) == 1:
        return f"{owners[0]}.{key}"
    if not owners:
        raise ValueError(f"unknown config key '{key}'")
    raise ValueError(f"config key '{key}' is ambiguous: use one of {[f'{o}.{key}' for o in owners]}")


def set_value(config: PretrainConfig, dotted: str, value: Any) -> None:
    section_name, _, key = dotted.partition(".")
    if section_name not in _sections() or not key or "." in key:
        raise ValueError(f"unknown config key '{dotted}'")
    section = getattr(config, section_name)
    hints = typing.get_type_hints(type(section))
    if key not in hints:
        raise ValueError(f"unknown config key '{dotted}'")
    setattr(section, key, coerce(value, hints[key], dotted))


def _sections() -> dict[str, type]:
    return {name: hint for name, hint in typing.get_type_hints(PretrainConfig).items()}


def _get(config: PretrainConfig, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


