"""The authors' cluster runs (ReasonCLIP scripts/archive/ft_*_leo_*.sh): one recipe per script, checked at the
real backbone shape on the meta device (every parameter's lr / weight decay by the authors' group rule) and
through `--dry-run` on tiny stand-ins (batch, schedule, w(t), precision, volume).

Every expected value below is written from the archive scripts (ReasonCLIP @8286f85) and the rules of their
Python scripts (trainning/ft_clip_r_*.py), never read from our recipes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pretrain_helpers import REPO, make_workspace, single_thread
from reasonclip_llava.cli import main as cli_main
from reasonclip_llava.encoder.modeling import ReasonCLIPForPretraining
from reasonclip_llava.pretrain.config import load_config
from reasonclip_llava.pretrain.objective import StageObjective
from reasonclip_llava.pretrain.optim import build_param_groups
from reasonclip_llava.pretrain.trainer import stage_heads
from reasonclip_llava.testing.real_shapes import real_shape_model
from reasonclip_llava.testing.tiny import save_tiny_siglip

ARCHIVE = REPO / "train" / "archive"
B32, L14_336 = "openai/clip-vit-base-patch32", "openai/clip-vit-large-patch14-336"
GIANT, SO400M2, SO400M = "google/siglip2-giant-opt-patch16-384", "google/siglip2-so400m-patch14-384", "google/siglip-so400m-patch14-384"

# script -> (recipe, backbone at real shape, stage, --batch_size, --num_processes, main lr (--learning_rate or
# --default_lr), --visual_lr, --text_lr, --logit_scale_lr, --classifier_lr, --weight_decay, --warmup_ratio,
# (tb_start, tb_t1, tb_mid, tb_t2, tb_end), --use_sigmoid_loss, gamma (0: the wo_cls script), --eval_ratio).
# Stage 1 derives its group lrs from the main lr: vision main/10, text main/10*3, logit_scale main.
SCRIPTS = {
    "ft_clipr_leo_des_direct.sh": ("stage0_descriptive_b32", B32, "stage0", 512, 32, 1e-4, 1e-5, 3e-5, 5e-4, None, 1e-4, 0.1, None, False, None, 0.25),
    "ft_clipr_leo_rea_direct.sh": ("stage0_reasoning_l14_336", L14_336, "stage0", 768, 32, 1e-4, 1e-5, 3e-5, 5e-4, None, 1e-4, 0.1, None, False, None, 0.25),
    "ft_clipr_leo_s1.sh": ("stage1_l14_336", L14_336, "stage1", 512, 32, 1e-4, None, None, None, None, 0.05, 0.1, (0.6, 0.2, 0.3, 0.8, 0.5), False, None, 0.25),
    "ft_clipr_leo_s1_e2.sh": ("stage1_l14_336_e2", L14_336, "stage1", 512, 32, 2e-5, None, None, None, None, 0.05, 0.03, (0.6, 0.2, 0.4, 0.8, 0.5), False, None, 0.25),
    "ft_clipr_leo_s2.sh": ("stage2_b32", B32, "stage2", 768, 32, 1e-4, 1e-5, 2e-5, 1e-4, 1.5e-3, 0.1, 0.1, None, False, 0.05, 0.25),
    "ft_clipr_leo_s2_wo_cls.sh": ("stage2_wo_cls_clip", L14_336, "stage2", 512, 32, 1e-4, 1e-5, 2e-5, 1e-4, None, 0.1, 0.1, None, False, 0.0, 0.25),
    "ft_siglipr_leo_des_direct.sh": ("stage0_descriptive_siglip2_giant", GIANT, "stage0", 256, 48, 1e-4, 1e-5, 3e-5, 5e-4, None, 0.05, 0.1, None, True, None, 0.25),
    "ft_siglipr_leo_rea_direct.sh": ("stage0_reasoning_siglip2_so400m", SO400M2, "stage0", 512, 32, 1e-4, 1e-5, 3e-5, 5e-4, None, 0.05, 0.1, None, True, None, 0.25),
    "ft_siglipr_leo_s1.sh": ("stage1_siglip2_giant", GIANT, "stage1", 256, 48, 1e-4, None, None, None, None, 0.05, 0.1, (0.6, 0.2, 0.3, 0.8, 0.5), True, None, 0.25),
    "ft_siglipr_leo_s1_e2.sh": ("stage1_siglip_so400m_e2", SO400M, "stage1", 384, 32, 2e-5, None, None, None, None, 0.05, 0.03, (0.6, 0.2, 0.4, 0.8, 0.5), False, None, 0.05),
    "ft_siglipr_leo_s2.sh": ("stage2_siglip2_giant", GIANT, "stage2", 256, 48, 1e-4, 1e-5, 2e-5, 1e-4, 1.5e-3, 0.1, 0.1, None, True, 0.05, 0.25),
    "ft_siglipr_leo_s2_wo_cls.sh": ("stage2_wo_cls_siglip_so400m", SO400M, "stage2", 512, 32, 1e-4, 1e-5, 2e-5, 1e-4, None, 0.1, 0.1, None, False, 0.0, 0.25),
}


def authors_lr_wd(script: str, name: str) -> tuple[float, float]:
    """(lr, weight decay) of one parameter in the authors' AdamW, by their substring rule."""
    _, _, stage, _, _, main, visual, text, logit, classifier, wd, *_ = SCRIPTS[script]
    if stage == "stage1":  # ft_clip_r_s1.py: towers and logit_scale without decay, their lrs from the main lr
        visual, text, logit, tower_wd = main / 10, main / 10 * 3, main, 0.0
    else:  # stage 0 / 2: the tower groups take AdamW's default weight decay (--weight_decay)
        tower_wd = wd
    if "vision_model." in name:
        return visual, tower_wd
    if "text_model." in name:
        return text, tower_wd
    if "logit_scale" in name:
        return logit, 0.0
    if "category_heads." in name:  # their text_classifier / image_classifier groups (lr only: default decay)
        return classifier, wd
    return main, wd  # the default group: projections, SigLIP's logit_bias


def test_every_archive_script_has_a_recipe_naming_it():
    assert sorted(p.stem for p in ARCHIVE.glob("*.yaml")) == sorted(entry[0] for entry in SCRIPTS.values())
    for script, entry in SCRIPTS.items():
        text = (ARCHIVE / f"{entry[0]}.yaml").read_text()
        assert f"scripts/archive/{script}" in text.splitlines()[0]
    table = (REPO / "docs" / "PUBLISHED_RECIPES.md").read_text()
    assert all(f"`{script}`" in table and f"`archive/{entry[0]}.yaml`" in table for script, entry in SCRIPTS.items())


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_archive_recipe_groups_at_real_shape_are_the_authors(script):
    """Real-shape backbone on the meta device: every trainable parameter's lr / weight decay by their rule."""
    recipe, backbone_name, stage, batch, _, _, _, _, _, _, _, warmup, w, sigmoid, gamma, eval_ratio = SCRIPTS[script]
    config = load_config(ARCHIVE / f"{recipe}.yaml")
    assert (config.stage.name, config.data.batch_size, config.schedule.warmup_ratio, config.data.eval_every) == (stage, batch, warmup, eval_ratio)
    assert (config.runtime.gradient_accumulation_steps, config.schedule.epochs, config.data.holdout_ratio) == (2, 1, 0.002)
    assert (config.runtime.precision, config.runtime.mixed_precision) == ("authors_bf16", "bf16")  # --bf16: the model in bf16
    assert config.optim.logit_scale_max == pytest.approx(math.log(50))
    if w is not None:
        assert config.stage.w_schedule == list(w) and config.stage.anchor_beta == 1e-5
    if gamma is not None:
        assert config.stage.category_gamma == gamma
    with torch.device("meta"):
        encoder = ReasonCLIPForPretraining(real_shape_model(backbone_name), stage_heads(config, None))
        StageObjective(encoder, config.stage, 1000, config.optim.logit_scale_max)
    uses_sigmoid = config.stage.contrastive == "siglip" or (config.stage.contrastive == "auto" and encoder.family == "siglip")
    assert uses_sigmoid == sigmoid
    assert (encoder.category_heads is not None) == bool(gamma)  # the wo_cls scripts build no classifiers
    got = {n: (g["lr"], g["weight_decay"]) for g in build_param_groups(encoder, config.optim) for n in g["param_names"]}
    # Their CE mode never reads SigLIP's logit_bias: no gradient, never updated; ours holds it frozen.
    unused = {"backbone.logit_bias"} if encoder.family == "siglip" and not sigmoid else set()
    assert set(got) == {n for n, _ in encoder.named_parameters()} - unused
    for name, value in got.items():
        assert value == pytest.approx(authors_lr_wd(script, name)), f"{recipe}: {name}"


# ----------------------------------------------------------------------------------------- --dry-run on tiny stand-ins
@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    paths = make_workspace(tmp_path_factory.mktemp("archive_ws"))
    paths["siglip"] = save_tiny_siglip(paths["work"] / "tiny_siglip")
    return paths


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_archive_recipe_dry_run_volume(ws, tmp_path, capsys, script):
    recipe, backbone_name, stage, batch, *_ = SCRIPTS[script]
    warmup, w = SCRIPTS[script][11], SCRIPTS[script][12]
    siglip = "siglip" in backbone_name
    config = load_config(ARCHIVE / f"{recipe}.yaml")
    data = ws["reasonpro"] if stage == "stage2" else ws["reasonlite"]
    overrides = [f"--model.name_or_path={ws['siglip' if siglip else 'clip']}", f"--data.train={data}", "--data.image_root=",
                 "--data.batch_size=4", "--data.num_workers=0", f"--runtime.output_dir={tmp_path}"]
    overrides.append(f"--data.sources=[{ws['reasonpro']}]" if config.data.sources else "--data.sources=")
    if siglip:  # the tiny SigLIP saves no tokenizer; 16 text positions
        overrides += [f"--model.tokenizer={ws['t5']}", "--data.max_length=16"]
    with single_thread():
        assert cli_main(["pretrain", str(ARCHIVE / f"{recipe}.yaml"), "--dry-run", "--world-size=2", *overrides]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["batch"] == {"per_device": 4, "world_size": 2, "gradient_accumulation_steps": 2, "global": 16}
    samples = plan["data"]["samples_per_epoch"]
    rows = {p["path"]: p["samples"] for p in plan["data"]["sources"]}
    assert samples == sum(rows.values()) > 0
    assert plan["schedule"]["max_steps"] == (samples // 8) // 2  # drop_last per device batch of 4 x 2 ranks, accumulation 2
    assert plan["schedule"]["warmup_steps"] == math.ceil(warmup * plan["schedule"]["max_steps"])
    assert plan["precision"] == {"mixed_precision": "bf16", "precision": "authors_bf16", "master_weights": "bf16"}
    if w is not None:  # w(t) at p = 0, 0.2, 0.5, 0.8, 0.81, 1: start, start, halfway down the ramp, mid, end, end
        start, _, mid, _, end = w
        assert list(plan["w_schedule"].values()) == pytest.approx([start, start, (start + mid) / 2, mid, end, end])
