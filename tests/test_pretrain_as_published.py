"""Running as the authors ran, through the real trainer on a tiny CLIP: pure bf16 weights (runtime.precision),
READ's T5 dropout inside the objective, the lowest-held-out-loss weights as the result (runtime.final_weights).

Expected values come from bf16's format (8 significant bits: a weight in [1, 2) moves in steps of 2^-7, in
[2, 4) in steps of 2^-6, so an update below half a step rounds back) and from the authors' code, not from ours.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pretrain_helpers import make_workspace, recipe, single_thread, stage_args
from reasonclip_llava.encoder.modeling import ReasonCLIPForPretraining
from reasonclip_llava.pretrain import trainer as trainer_module
from reasonclip_llava.pretrain.config import load_config
from reasonclip_llava.pretrain.optim import build_optimizer
from reasonclip_llava.pretrain.precision import apply_precision
from reasonclip_llava.pretrain.trainer import pretrain_from_yaml

# The published stage-1 groups: vision 1e-5, text 3e-5, logit_scale 1e-4, no decay on them; constant lr, no warmup.
GROUPS = ("--optim.groups=[{name: vision, match: [vision_model.], lr: 1.0e-5, weight_decay: 0.0},"
          " {name: text, match: [text_model.], lr: 3.0e-5, weight_decay: 0.0},"
          " {name: logit_scale, match: [logit_scale], lr: 1.0e-4, weight_decay: 0.0}]")
STEPS = ("--schedule.max_steps=2", "--schedule.warmup_steps=0", "--schedule.scheduler=constant", "--runtime.save_every=0",
         "--runtime.mixed_precision=bf16")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("as_published_ws"))


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def two_steps(ws, tmp_path_factory):
    """start weights, and the final weights after 2 stage-1 steps under each precision."""
    out = {"start": load_file(str(ws["clip"] / "model.safetensors"))}
    with single_thread():
        for precision in ("fp32_master", "authors_bf16"):
            run = tmp_path_factory.mktemp(precision)
            final = pretrain_from_yaml(recipe("stage1"), stage_args(ws, "stage1", run, GROUPS, *STEPS, f"--runtime.precision={precision}"))
            out[precision] = load_file(str(final / "model.safetensors"))
    return out


def _vision_layer_norm_weights(weights):
    return {k: v for k, v in weights.items() if k.startswith("vision_model.") and ("layer_norm" in k or "layrnorm" in k) and k.endswith("weight")}


def test_a_1e5_update_of_a_weight_near_1_rounds_away_in_authors_bf16_only(two_steps):
    start = _vision_layer_norm_weights(two_steps["start"])
    assert start and all(torch.equal(v, torch.ones_like(v)) for v in start.values())  # LayerNorm scales start at 1.0
    fp32 = _vision_layer_norm_weights(two_steps["fp32_master"])
    bf16 = _vision_layer_norm_weights(two_steps["authors_bf16"])
    # fp32 masters: each AdamW step moves a weight by about lr = 1e-5 (2 steps: at most 2e-5)
    moved = max((fp32[k] - start[k]).abs().max().item() for k in start)
    assert 5e-6 < moved <= 2.5e-5
    # bf16: the neighbours of 1.0 are 1 - 2^-8 and 1 + 2^-7, so 1 - 1e-5 rounds back to exactly 1.0
    assert all(v.dtype == torch.bfloat16 and torch.equal(v.float(), start[k]) for k, v in bf16.items())


def test_logit_scale_stays_put_at_1e4_in_authors_bf16(two_steps):
    start = two_steps["start"]["logit_scale"]  # ln(1 / 0.07) = 2.659: bf16 steps of 2^-6 there
    fp32, bf16 = two_steps["fp32_master"]["logit_scale"], two_steps["authors_bf16"]["logit_scale"]
    assert 5e-5 < (fp32 - start).abs().item() <= 2.5e-4  # moves by ~1e-4 per step with fp32 masters
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, start.to(torch.bfloat16))
    # ... while bf16 training did run: larger-lr, small-magnitude weights (the default group at 5e-4) moved
    assert not torch.equal(two_steps["authors_bf16"]["visual_projection.weight"], two_steps["start"]["visual_projection.weight"].bfloat16())


def test_authors_bf16_keeps_adamw_state_in_bf16_and_needs_bf16_autocast(ws, tmp_path):
    encoder = ReasonCLIPForPretraining.from_pretrained(ws["clip"])
    config = load_config(recipe("stage1"), stage_args(ws, "stage1", tmp_path, "--runtime.mixed_precision=bf16", "--runtime.precision=authors_bf16"))
    apply_precision(config.runtime.precision, encoder)
    optimizer = build_optimizer(encoder, config.optim, fused=False)
    sum(p.float().square().sum() for p in encoder.parameters()).backward()
    optimizer.step()
    dtypes = {t.dtype for state in optimizer.state.values() for key, t in state.items() if key in ("exp_avg", "exp_avg_sq")}
    assert dtypes == {torch.bfloat16} and {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="runtime.precision.*mixed_precision=bf16"):
        load_config(recipe("stage1"), stage_args(ws, "stage1", tmp_path, "--runtime.precision=authors_bf16"))
    with pytest.raises(ValueError, match="runtime.precision"):
        load_config(recipe("stage1"), stage_args(ws, "stage1", tmp_path, "--runtime.precision=bf16_pure"))


# ----------------------------------------------------------------------------------------- READ's T5 dropout
def test_t5_dropout_follows_the_recipe_through_training_and_evaluation(ws, tmp_path, monkeypatch):
    """The frozen T5's mode seen by each forward of a real run: train mode in the training steps (READ's
    Trainer), eval mode in the held-out pass."""
    modes: list[bool] = []
    load = trainer_module.load_t5_decoder

    def spy(config):  # noqa: ANN001
        t5 = load(config)
        if t5 is not None:
            t5.decoder.register_forward_pre_hook(lambda module, args: modes.append(module.training))
        return t5

    monkeypatch.setattr(trainer_module, "load_t5_decoder", spy)
    args = ("--schedule.max_steps=2", "--runtime.save_every=0", "--data.holdout_ratio=0.2", "--data.eval_every=2")
    pretrain_from_yaml(recipe("read"), stage_args(ws, "read", tmp_path / "on", *args, "--stage.t5_dropout=true"))
    training, evaluation = modes[:2], modes[2:]
    assert training == [True, True] and evaluation and not any(evaluation)
    modes.clear()
    pretrain_from_yaml(recipe("read"), stage_args(ws, "read", tmp_path / "off", *args, "--stage.t5_dropout=false"))
    assert modes and not any(modes)


def test_t5_dropout_makes_two_forwards_differ(ws, tmp_path):
    from reasonclip_llava.pretrain.data import build_train_data
    from reasonclip_llava.pretrain.objective import StageObjective
    from reasonclip_llava.pretrain.trainer import load_t5_decoder, stage_heads

    losses = {}
    for dropout in (True, False):
        config = load_config(recipe("read"), stage_args(ws, "read", tmp_path, f"--stage.t5_dropout={str(dropout).lower()}"))
        t5 = load_t5_decoder(config)
        torch.manual_seed(0)  # the recon projector starts at the same random weights in both
        encoder = ReasonCLIPForPretraining.from_pretrained(ws["clip"], heads=stage_heads(config, t5.config.d_model))
        batch = next(build_train_data(config, encoder, 1, 0).batches(torch.device("cpu")))
        objective = StageObjective(encoder, config.stage, 10, None, t5=t5)
        with torch.no_grad():
            train = [objective(batch, 0)[1]["reconstruction"] for _ in range(2)]
            objective.eval()
            evaluation = [objective(batch, 0)[1]["reconstruction"] for _ in range(2)]
        losses[dropout] = train, evaluation
    (train_on, eval_on), (train_off, eval_off) = losses[True], losses[False]
    assert not torch.equal(train_on[0], train_on[1])  # dropout draws differ between the two forwards
    assert torch.equal(eval_on[0], eval_on[1]) and torch.equal(train_off[0], train_off[1])
    assert torch.equal(eval_on[0], train_off[0])  # no dropout: the same decoder gives the same loss


# ----------------------------------------------------------------------------------------- the run's result
def test_final_weights_best_exports_the_lowest_held_out_loss(ws, tmp_path):
    args = ("--schedule.max_steps=3", "--runtime.save_every=0", "--data.holdout_ratio=0.2", "--data.eval_every=1")
    final = pretrain_from_yaml(recipe("stage1"), stage_args(ws, "stage1", tmp_path / "best", *args, "--runtime.final_weights=best"))
    out = final.parent
    log = [json.loads(line) for line in (out / "eval_loss.jsonl").read_text().splitlines()]
    lowest = min(log, key=lambda entry: entry["eval_loss"])
    summary = json.loads((final / "training_summary.json").read_text())
    assert (summary["final_weights"], summary["best_step"]) == ("best", lowest["step"])
    assert json.loads((final / "eval_summary.json").read_text())["step"] == lowest["step"]
    best, ours = load_file(str(out / "best" / "model.safetensors")), load_file(str(final / "model.safetensors"))
    assert all(torch.equal(best[k], ours[k]) for k in best)
    # last/ holds the last step: the same weights as final/ of the same run with the default (last)
    default = pretrain_from_yaml(recipe("stage1"), stage_args(ws, "stage1", tmp_path / "last", *args))
    last, reference = load_file(str(out / "last" / "model.safetensors")), load_file(str(default / "model.safetensors"))
    assert all(torch.equal(last[k], reference[k]) for k in reference)
    assert "final_weights" not in json.loads((default / "training_summary.json").read_text())  # final/ = the last step
    with pytest.raises(ValueError, match="final_weights.*holdout_ratio"):
        load_config(recipe("stage1"), stage_args(ws, "stage1", tmp_path, "--runtime.final_weights=best"))
