"""Pretraining config (recipes, overrides, errors naming the key) and schedules (w(t), LR)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from reasonclip_llava.pretrain.config import PretrainConfig, load_config, parse_overrides
from reasonclip_llava.pretrain.schedule import build_lr_scheduler, dual_stream_weight

TRAIN = Path(__file__).resolve().parents[1] / "train"
RECIPES = sorted(p for p in TRAIN.glob("*.yaml") if p.name.startswith(("stage", "read", "tiny_")))
REQUIRED = ["--model.name_or_path=m", "--data.train=d.parquet", "--runtime.output_dir=o"]


def test_every_pretraining_recipe_loads_and_validates():
    names = {p.name for p in RECIPES}
    for expected in ("stage0_descriptive_b32.yaml", "stage0_reasoning_b32.yaml", "stage1_b32.yaml", "stage1_l14_336.yaml",
                     "stage1_so400m.yaml", "stage2_b32.yaml", "stage2_l14_336.yaml", "stage2_so400m.yaml", "read_b32.yaml",
                     "read_from_stage1_b32.yaml", "tiny_stage1.yaml", "tiny_stage2.yaml", "tiny_read.yaml"):
        assert expected in names
    for path in RECIPES:
        config = load_config(path)
        assert config.runtime.recipe == str(path)
        assert config.stage.name in path.name or path.name.startswith(config.stage.name)


def test_published_hyperparameters_in_recipes():
    stage1 = load_config(TRAIN / "stage1_l14_336.yaml")
    assert (stage1.optim.lr, stage1.optim.weight_decay, stage1.schedule.warmup_ratio, stage1.schedule.scheduler) == (1e-4, 0.05, 0.1, "cosine")
    assert (stage1.data.batch_size, stage1.runtime.gradient_accumulation_steps, stage1.schedule.epochs) == (512, 2, 1.0)
    assert stage1.stage.w_schedule == [0.70, 0.2, 0.50, 0.8, 0.60] and stage1.stage.anchor_beta == 1e-5
    assert math.isclose(stage1.optim.logit_scale_max, math.log(50))
    stage2 = load_config(TRAIN / "stage2_b32.yaml")
    # Published stage-2 groups (train_s2.sh): vision 1e-5, text 2e-5, logit_scale 1e-4, heads 1.5e-3, the rest 1e-4.
    assert {g.name: g.lr for g in stage2.optim.groups} == {"vision": 1e-5, "text": 2e-5, "logit_scale": 1e-4, "heads": 1.5e-3}
    assert (stage2.optim.lr, stage2.runtime.gradient_accumulation_steps) == (1e-4, 2)
    assert (stage2.stage.category_gamma, stage2.data.batch_size) == (0.05, 768)
    read = load_config(TRAIN / "read_b32.yaml")
    assert read.model.name_or_path == "openai/clip-vit-base-patch32" and read.model.gradient_checkpointing
    assert (read.optim.lr, read.schedule.warmup_steps, read.optim.weight_decay, read.schedule.epochs, read.data.global_batch_size) == (1e-5, 50, 0.1, 5, 256)
    assert (read.stage.hard_negatives, read.stage.recon_weight, read.stage.align_weight, read.stage.t5_model) == (3, 0.1, 0.5, "google/t5-v1_1-large")
    assert read.runtime.mixed_precision == "bf16"
    # The published SigLIP runs clamp the temperature at ln 50 too.
    assert math.isclose(load_config(TRAIN / "stage1_so400m.yaml").optim.logit_scale_max, math.log(50))


def test_overrides_are_type_coerced_and_bare_keys_resolve():
    config = load_config(TRAIN / "stage1_b32.yaml", [
        "--optim.lr=1e-5",              # YAML 1.1 reads this as a string; the field makes it a float
        "--batch_size=7",               # unique field name -> data.batch_size
        "--runtime.report_to=",         # empty list
        "--stage.w_schedule=[0.9, 0.1, 0.5, 0.9, 0.4]",
        "--gradient_checkpointing", "true",
        "--runtime.keep_last=null",
        "--deepspeed=train/ds_zero2_pretrain.json",
    ])
    assert config.optim.lr == 1e-5 and isinstance(config.optim.lr, float)
    assert config.data.batch_size == 7
    assert config.runtime.report_to == []
    assert config.stage.w_schedule == [0.9, 0.1, 0.5, 0.9, 0.4]
    assert config.model.gradient_checkpointing is True
    assert config.runtime.keep_last is None
    assert config.runtime.deepspeed == "train/ds_zero2_pretrain.json"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--optim.lr_vison=1e-5"], "unknown config key 'optim.lr_vison'"),
        (["--lr_vison=1e-5"], "unknown config key 'lr_vison'"),
        (["--optimizer.lr=1"], "unknown config key 'optimizer.lr'"),
        (["--optim.lr=fast"], "config key 'optim.lr' expects float, got 'fast'"),
        (["--data.batch_size=2.5"], "config key 'data.batch_size' expects int"),
        (["--model.gradient_checkpointing=maybe"], "config key 'model.gradient_checkpointing' expects bool"),
        (["--stage.name=stage3"], "config key 'stage.name' must be one of"),
        (["--stage.w_schedule=[0.7, 0.9, 0.5, 0.2, 0.6]"], "config key 'stage.w_schedule'"),
        (["--stage.name=read", "--stage.hard_negatives=0"], "config key 'stage.hard_negatives'"),
        (["--seed"], "config key 'runtime.seed' expects int, got 'true'"),  # a bare --flag means true
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ValueError) as error:
        load_config(TRAIN / "stage1_b32.yaml", overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_string_fields_keep_yaml_boolean_words(tmp_path):
    # On the command line 'no' is the string the field wants, not YAML 1.1's false.
    assert load_config(TRAIN / "stage1_b32.yaml", ["--runtime.mixed_precision=no"]).runtime.mixed_precision == "no"
    assert load_config(TRAIN / "stage1_b32.yaml", ["--mixed_precision", "no"]).runtime.mixed_precision == "no"
    recipe = tmp_path / "unquoted.yaml"
    recipe.write_text((TRAIN / "stage1_b32.yaml").read_text().replace("mixed_precision: bf16", "mixed_precision: no"))
    with pytest.raises(ValueError, match="config key 'runtime.mixed_precision' expects a string, got the YAML boolean False: quote"):
        load_config(recipe)


def test_bad_yaml_keys_name_the_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("optim:\n  lr_vison: 1.0e-5\n")
    with pytest.raises(ValueError, match="unknown config key 'optim.lr_vison'"):
        load_config(recipe, REQUIRED)
    recipe.write_text("optimiser:\n  lr: 1.0e-5\n")
    with pytest.raises(ValueError, match="unknown config key 'optimiser'"):
        load_config(recipe, REQUIRED)
    with pytest.raises(ValueError, match="config key 'model.name_or_path' is required"):
        load_config(None, REQUIRED[1:])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_parse_overrides_forms():
    assert parse_overrides(["--a.b=1", "--c", "2", "--some-key=x=y"]) == [("a.b", "1"), ("c", "2"), ("some_key", "x=y")]


def test_defaults_are_the_published_stage1_numbers():
    config = PretrainConfig()
    assert config.stage.w_schedule == [0.70, 0.2, 0.50, 0.8, 0.60]
    assert (config.stage.anchor_beta, config.stage.category_gamma, config.stage.recon_weight, config.stage.align_weight) == (1e-5, 0.05, 0.1, 0.5)


@pytest.mark.parametrize("progress, expected", [(0.0, 0.70), (0.2, 0.70), (0.5, 0.60), (0.8, 0.50), (0.9, 0.60), (1.0, 0.60)])
def test_dual_stream_weight_published_schedule(progress, expected):
    # Hand numbers: 0.70 up to p = 0.2, then 0.70 - 0.20 * (p - 0.2) / 0.6 (0.60 at p = 0.5, 0.50 at p = 0.8), then 0.60.
    assert dual_stream_weight(progress) == pytest.approx(expected, abs=1e-12)


def test_dual_stream_weight_is_configurable():
    schedule = (0.9, 0.5, 0.1, 0.75, 0.3)
    assert dual_stream_weight(0.4, schedule) == 0.9
    assert dual_stream_weight(0.625, schedule) == pytest.approx(0.5)
    assert dual_stream_weight(0.8, schedule) == 0.3


def test_cosine_schedule_with_warmup_per_group():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-3}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 2e-5}]
    optimizer = torch.optim.AdamW(groups)
    scheduler = build_lr_scheduler(optimizer, "cosine", warmup_steps=10, max_steps=110)
    seen = []
    for _ in range(110):
        seen.append(scheduler.get_last_lr())
        optimizer.step()
        scheduler.step()
    for step in (0, 5, 10, 60, 100):
        factor = step / 10 if step < 10 else 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))
        assert seen[step][0] == pytest.approx(1e-3 * factor)
        assert seen[step][1] == pytest.approx(2e-5 * factor)
    with pytest.raises(ValueError, match="linear"):
        build_lr_scheduler(optimizer, "linear", 1, 2)
