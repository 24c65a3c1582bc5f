"""Every stage end to end on a tiny CLIP and synthetic data, and each stage's loss against a hand reference."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from pretrain_helpers import checkpoint_tensors, make_workspace, recipe, single_thread, stage_args
from reasonclip_llava.data import ReadDataset, ReasonCollator, ReasonLiteDataset, ReasonProDataset
from reasonclip_llava.encoder.modeling import HeadsConfig, ReasonCLIPForPretraining
from reasonclip_llava.losses import SigLipLoss
from reasonclip_llava.pretrain.config import StageConfig, load_config
from reasonclip_llava.pretrain.objective import StageObjective
from reasonclip_llava.pretrain.trainer import build_param_groups, pretrain, pretrain_from_yaml

LN50 = math.log(50)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("pretrain_ws"))


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def stage1_final(ws, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1_run")
    with single_thread():
        return pretrain_from_yaml(recipe("stage1"), stage_args(ws, "stage1", out, "--schedule.max_steps=4", "--runtime.save_every=2",
                                                              "--runtime.report_to=tensorboard"))


def _batch(dataset, tokenizer, size=8, t5_tokenizer=None):
    return ReasonCollator(tokenizer, t5_tokenizer=t5_tokenizer)([dataset[i] for i in range(size)])


def _processor_and_tokenizer(path):
    from transformers import AutoImageProcessor, AutoTokenizer

    return AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _clip_loss_reference(backbone, pixel_values, input_ids, attention_mask):
    """Symmetric CLIP loss from CLIPModel's own forward (logits_per_image), not from our losses."""
    logits = backbone(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits_per_image
    labels = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


# ----------------------------------------------------------------------------------------- stage 1
def test_stage1_runs_and_writes_reloadable_checkpoints(ws, stage1_final):
    out = stage1_final.parent
    assert stage1_final.name == "final"
    assert (out / "checkpoint-2" / "trainer_state" / "optimizer.bin").is_file()
    assert not list(out.glob(".tmp-*"))
    model = ReasonCLIPForPretraining.from_pretrained(stage1_final)
    assert model.info.stage == "stage1" and model.info.base_model == str(ws["clip"])
    assert type(AutoModel.from_pretrained(stage1_final)).__name__ == "CLIPModel"  # a plain CLIP checkpoint
    trained, start = checkpoint_tensors(stage1_final), checkpoint_tensors(ws["clip"])
    assert trained.keys() == start.keys()
    assert not torch.equal(trained["text_model.encoder.layers.0.self_attn.q_proj.weight"], start["text_model.encoder.layers.0.self_attn.q_proj.weight"])
    assert (stage1_final / "tokenizer.json").is_file() and (stage1_final / "preprocessor_config.json").is_file()
    assert list((out / "logs").rglob("events.out.tfevents*")), "tensorboard events were not written"
    summary = json.loads((stage1_final / "training_summary.json").read_text())
    assert summary == {"steps": 4, "skipped_images": 0}


def test_stage1_loss_equals_hand_assembled_reference(ws):
    processor, tokenizer = _processor_and_tokenizer(ws["clip"])
    batch = _batch(ReasonLiteDataset(ws["reasonlite"], image_processor=processor), tokenizer)
    encoder = ReasonCLIPForPretraining.from_pretrained(ws["clip"])
    beta = 1e-3  # larger than published so the anchor term is visible next to the contrastive terms
    objective = StageObjective(encoder, StageConfig(name="stage1", anchor_beta=beta), max_steps=10, logit_scale_max=LN50)
    theta0 = {n: p.detach().clone() for n, p in encoder.backbone.named_parameters()}
    torch.manual_seed(0)
    with torch.no_grad():  # move away from theta0 so the anchor is not zero
        for p in encoder.backbone.parameters():
            p.add_(0.02 * torch.randn_like(p))
    loss, parts = objective(batch, step=5)  # p = 0.5 -> w = 0.60

    backbone = encoder.backbone
    with torch.no_grad():
        desc = _clip_loss_reference(backbone, batch["pixel_values"], batch["desc_input_ids"], batch["desc_attention_mask"])
        reason = _clip_loss_reference(backbone, batch["pixel_values"], batch["reason_input_ids"], batch["reason_attention_mask"])
        anchored = [n for n in theta0 if n.startswith(("vision_model.", "text_model."))]
        params = dict(backbone.named_parameters())
        anchor = beta * sum(((params[n].double() - theta0[n].double()) ** 2).sum() for n in anchored)  # float64 reference
    assert "visual_projection.weight" not in anchored and "logit_scale" not in anchored
    expected = 0.60 * desc + 0.40 * reason + anchor
    assert anchor.item() > 1e-3
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["anchor"].item() == pytest.approx(anchor.item(), rel=1e-4)  # fp32 sum over 1.7M squares
    assert parts["clip_descriptive"].item() == pytest.approx(0.6 * desc.item(), rel=1e-5)
    # w(t) follows the step: at p = 0.1 the descriptive weight is 0.70.
    _, early = objective(batch, step=1)
    assert early["clip_descriptive"].item() == pytest.approx(0.7 * desc.item(), rel=1e-5)


# ----------------------------------------------------------------------------------------- stage 0
@pytest.mark.parametrize("captions, prefix", [("descriptive", "desc"), ("reasoning", "reason")])
def test_stage0_uses_one_caption_stream(ws, captions, prefix):
    processor, tokenizer = _processor_and_tokenizer(ws["clip"])
    batch = _batch(ReasonLiteDataset(ws["reasonlite"], image_processor=processor), tokenizer)
    encoder = ReasonCLIPForPretraining.from_pretrained(ws["clip"])
    objective = StageObjective(encoder, StageConfig(name="stage0", captions=captions), max_steps=10, logit_scale_max=LN50)
    loss, parts = objective(batch, step=0)
    with torch.no_grad():
        expected = _clip_loss_reference(encoder.backbone, batch["pixel_values"], batch[f"{prefix}_input_ids"], batch[f"{prefix}_attention_mask"])
    assert list(parts) == ["clip"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_stage0_reasoning_end_to_end(ws, tmp_path):
    final = pretrain_from_yaml(recipe("stage0"), stage_args(ws, "stage0", tmp_path, "--stage.name=stage0", "--stage.captions=reasoning",
                                                            "--schedule.max_steps=2", "--runtime.save_every=0"))
    assert ReasonCLIPForPretraining.from_pretrained(final).info.stage == "stage0"


# ----------------------------------------------------------------------------------------- stage 2
def test_stage2_loss_equals_reference(ws):
    processor, tokenizer = _processor_and_tokenizer(ws["clip"])
    batch = _batch(ReasonProDataset(ws["reasonpro"], image_processor=processor), tokenizer)
    encoder = ReasonCLIPForPretraining.from_pretrained(ws["clip"], heads=HeadsConfig(category_heads=True))
    objective = StageObjective(encoder, StageConfig(name="stage2", category_gamma=0.05), max_steps=10, logit_scale_max=LN50)
    loss, parts = objective(batch, step=3)
    backbone, heads = encoder.backbone, encoder.category_heads
    with torch.no_grad():
        clip = _clip_loss_reference(backbone, batch["pixel_values"], batch["reason_input_ids"], batch["reason_attention_mask"])
        out = backbone(input_ids=batch["reason_input_ids"], attention_mask=batch["reason_attention_mask"], pixel_values=batch["pixel_values"])
        text_logits = heads.text_head(F.normalize(out.text_embeds, dim=-1))
        image_logits = heads.image_head(F.normalize(out.image_embeds, dim=-1))
        ce = F.cross_entropy(text_logits, batch["text_category"])
        bce = F.binary_cross_entropy_with_logits(image_logits, batch["image_categories"])
    assert batch["image_categories"].sum(1).eq(3).all()
    assert loss.item() == pytest.approx((clip + 0.05 * (ce + bce)).item(), rel=1e-5)
    assert set(parts) == {"clip_reasoning", "category"}


def test_stage2_end_to_end_heads_and_group_learning_rates(ws, stage1_final, tmp_path):
    final = pretrain_from_yaml(recipe("stage2"), stage_args(ws, "stage2", tmp_path, "--schedule.max_steps=2", "--runtime.save_every=1",
                                                            model=stage1_final))
    model = ReasonCLIPForPretraining.from_pretrained(final)
    assert model.category_heads is not None and model.info.stage == "stage2"
    heads = load_file(str(final / "heads.safetensors"))
    assert set(heads) == {"category_heads.text_head.weight", "category_heads.text_head.bias",
                          "category_heads.image_head.weight", "category_heads.image_head.bias"}
    assert torch.equal(model.category_heads.text_head.weight, heads["category_heads.text_head.weight"])
    # The optimizer saved with checkpoint-1 holds the configured LR per named group.
    config = load_config(recipe("stage2"), stage_args(ws, "stage2", tmp_path))
    groups = torch.load(tmp_path / "checkpoint-1" / "trainer_state" / "optimizer.bin", weights_only=False)["param_groups"]
    by_name = {g["name"]: g for g in groups}
    expected_lr = {"vision": config.optim.lr_vision, "text": config.optim.lr_text, "logit_scale": config.optim.lr_logit_scale,
                   "heads": config.optim.lr_heads, "default": config.optim.lr}  # default: the projections, as published
    assert {n.removesuffix("_no_decay") for n in by_name} == set(expected_lr)
    for name, group in by_name.items():
        assert group["initial_lr"] == expected_lr[name.removesuffix("_no_decay")]
        assert group["weight_decay"] == (0.0 if name.endswith("_no_decay") else config.optim.weight_decay)
    assert len(by_name["logit_scale_no_decay"]["params"]) == 1 and "logit_scale" not in by_name


def test_param_groups_cover_every_parameter_once(ws):
    model = ReasonCLIPForPretraining.from_pretrained(ws["clip"], heads=HeadsConfig(category_heads=True, recon_dim=16))
    optim = load_config(recipe("stage2"), stage_args(ws, "stage2", ws["work"])).optim
    groups = build_param_groups(model, optim)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert "backbone.logit_scale" in by_group["logit_scale_no_decay"]
    assert "recon_projector.weight" in by_group["heads"] and "category_heads.text_head.bias" in by_group["heads_no_decay"]
    assert "backbone.visual_projection.weight" in by_group["default"]  # the authors' default group, not the tower's
    assert "backbone.vision_model.pre_layrnorm.weight" in by_group["vision_no_decay"]
    assert "backbone.text_model.encoder.layers.0.self_attn.q_proj.bias" in by_group["text_no_decay"]


# ----------------------------------------------------------------------------------------- READ
def test_read_end_to_end_t5_frozen_and_not_saved(ws, tmp_path):
    final = pretrain_from_yaml(recipe("read"), stage_args(ws, "read", tmp_path, "--schedule.max_steps=2", "--runtime.save_every=1"))
    saved = load_file(str(final / "model.safetensors"))
    assert set(saved) == set(load_file(str(ws["clip"] / "model.safetensors")))  # the CLIP weights, nothing of T5
    assert set(load_file(str(final / "heads.safetensors"))) == {"recon_projector.weight"}
    model = ReasonCLIPForPretraining.from_pretrained(final)
    assert model.recon_projector.weight.shape == (16, 32) and model.info.stage == "read"
    state = torch.load(tmp_path / "checkpoint-1" / "trainer_state" / "optimizer.bin", weights_only=False)
    optimized = sum(len(g["params"]) for g in state["param_groups"])
    assert optimized == len(list(model.parameters()))  # backbone + projector; no T5 parameter
    assert not any("decoder" in k or "shared" in k for k in load_file(str(tmp_path / "checkpoint-1" / "trainer_state" / "model.safetensors")))


def test_read_objective_gradients_skip_t5(ws):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    processor, tokenizer = _processor_and_tokenizer(ws["clip"])
    t5_tokenizer = AutoTokenizer.from_pretrained(ws["t5"])
    dataset = ReadDataset(ws["reasonlite"], image_processor=processor, caption_columns=("tb",), k=3)
    batch = _batch(dataset, tokenizer, t5_tokenizer=t5_tokenizer)
    t5 = T5ForConditionalGeneration.from_pretrained(ws["t5"])
    encoder = ReasonCLIPForPretraining.from_pretrained(ws["clip"], heads=HeadsConfig(recon_dim=t5.config.d_model))
    objective = StageObjective(encoder, StageConfig(name="read", hard_negatives=3), max_steps=10, logit_scale_max=LN50, t5=t5)
    loss, parts = objective(batch, step=0)
    assert set(parts) == {"clip_hard_negatives", "reconstruction", "alignment"}
    assert batch["neg_input_ids"].shape[0] == 3 * batch["caption_input_ids"].shape[0]
    loss.backward()
    assert encoder.recon_projector.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in t5.parameters())
    assert not any(k.startswith("frozen") or "t5" in k for k in objective.state_dict())


def test_read_bf16_holds_the_frozen_decoder_in_bf16(ws):
    from reasonclip_llava.pretrain.trainer import load_t5_decoder

    fp32 = load_t5_decoder(load_config(recipe("read"), stage_args(ws, "read", ws["t5"], "--runtime.mixed_precision=no")))
    bf16 = load_t5_decoder(load_config(recipe("read"), stage_args(ws, "read", ws["t5"], "--runtime.mixed_precision=bf16")))
    assert {p.dtype for p in fp32.parameters()} == {torch.float32} and {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert fp32.encoder is None and not any(p.requires_grad for p in bf16.parameters())

    # Under bf16 autocast the bf16 decoder computes the fp32 decoder's loss (to bf16 rounding) and passes the gradient on.
    processor, tokenizer = _processor_and_tokenizer(ws["clip"])
    from transformers import AutoTokenizer

    dataset = ReadDataset(ws["reasonlite"], image_processor=processor, caption_columns=("tb",), k=3)
    batch = _batch(dataset, tokenizer, t5_tokenizer=AutoTokenizer.from_pretrained(ws["t5"]))
    losses = {}
    for name, t5 in (("fp32", fp32), ("bf16", bf16)):
        encoder = ReasonCLIPForPretraining.from_pretrained(ws["clip"], heads=HeadsConfig(recon_dim=t5.config.d_model))
        torch.nn.init.normal_(encoder.recon_projector.weight, std=0.5, generator=torch.Generator().manual_seed(0))
        objective = StageObjective(encoder, StageConfig(name="read", hard_negatives=3), max_steps=10, logit_scale_max=LN50, t5=t5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, parts = objective(batch, step=0)
        parts["reconstruction"].backward()
        assert encoder.recon_projector.weight.grad.abs().sum() > 0
        losses[name] = parts["reconstruction"].float()
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=2e-2, atol=0)


# ----------------------------------------------------------------------------------------- temperature, SigLIP
def test_logit_scale_clamped_to_ln50(ws, tmp_path):
    clip = tmp_path / "hot_clip"
    AutoModel.from_pretrained(ws["clip"]).save_pretrained(clip)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (clip / name).write_bytes((ws["clip"] / name).read_bytes())
    weights = load_file(str(clip / "model.safetensors"))
    weights["logit_scale"] = torch.tensor(math.log(100.0))
    save_file(weights, str(clip / "model.safetensors"), metadata={"format": "pt"})
    final = pretrain_from_yaml(recipe("stage1"), stage_args(ws, "stage1", tmp_path / "run", "--schedule.max_steps=2",
                                                            "--runtime.save_every=0", "--optim.lr_logit_scale=1.0", model=clip))
    assert load_file(str(final / "model.safetensors"))["logit_scale"].item() <= LN50 + 1e-6


def test_siglip_backbone_uses_sigmoid_loss_end_to_end(ws, tiny_siglip_dir, tmp_path):
    encoder = ReasonCLIPForPretraining.from_pretrained(tiny_siglip_dir)
    objective = StageObjective(encoder, StageConfig(name="stage1"), max_steps=10, logit_scale_max=None)
    assert isinstance(objective.contrastive, SigLipLoss)
    final = pretrain_from_yaml(recipe("stage1"), stage_args(ws, "stage1", tmp_path, "--schedule.max_steps=2", "--runtime.save_every=0",
                                                            f"--model.tokenizer={ws['t5']}", "--data.max_length=16",
                                                            "--optim.logit_scale_max=null", model=tiny_siglip_dir))
    assert type(AutoModel.from_pretrained(final)).__name__ == "SiglipModel"


# ----------------------------------------------------------------------------------------- failures
def test_nan_loss_stops_naming_the_step_and_writes_nothing(ws, tmp_path, monkeypatch):
    original = StageObjective.forward

    def poisoned(self, batch, step):
        loss, parts = original(self, batch, step)
        return (loss * float("nan"), parts) if step == 3 else (loss, parts)

    monkeypatch.setattr(StageObjective, "forward", poisoned)
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 3"):
        pretrain_from_yaml(recipe("stage1"), stage_args(ws, "stage1", tmp_path, "--schedule.max_steps=6", "--runtime.save_every=1",
                                                        "--runtime.keep_last=null"))
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert not (tmp_path / "final").exists() and not list(tmp_path.glob(".tmp-*"))
    ReasonCLIPForPretraining.from_pretrained(tmp_path / "checkpoint-3")  # the last good checkpoint is intact


def test_bad_paths_name_the_key(ws, tmp_path):
    with pytest.raises(FileNotFoundError, match="data.train"):
        pretrain(load_config(recipe("stage1"), stage_args(ws, "stage1", tmp_path, f"--data.train={tmp_path / 'nope.parquet'}")))
    with pytest.raises(FileNotFoundError, match="runtime.resume_from"):
        pretrain(load_config(recipe("stage1"), stage_args(ws, "stage1", tmp_path, f"--runtime.resume_from={tmp_path}")))
    with pytest.raises(FileNotFoundError, match="stage.t5_model"):
        pretrain(load_config(recipe("read"), stage_args(ws, "read", tmp_path, f"--stage.t5_model={tmp_path / 'no_t5'}")))


# ----------------------------------------------------------------------------------------- webdataset
def test_webdataset_shards_train_and_resume_exactly(ws, tmp_path):
    from reasonclip_llava.data import write_wds_shards

    shards = tmp_path / "shards"
    write_wds_shards(ws["reasonlite"], shards, samples_per_shard=10)  # 38 rows -> 4 shards; a dir of .tar is detected
    args = lambda out, *extra: stage_args(ws, "stage1", out, f"--data.train={shards}", "--runtime.save_every=2", *extra)  # noqa: E731
    straight = pretrain_from_yaml(recipe("stage1"), args(tmp_path / "straight", "--schedule.max_steps=5"))
    # the same run in two parts: stopped after step 2 (as if killed after checkpoint-2), then resumed
    pretrain_from_yaml(recipe("stage1"), args(tmp_path / "parts", "--schedule.max_steps=5"))
    for late in ("checkpoint-4", "final"):
        shutil.rmtree(tmp_path / "parts" / late)
    resumed = pretrain_from_yaml(recipe("stage1"), args(tmp_path / "parts", "--schedule.max_steps=5", "--runtime.resume_from=latest"))
    expected, got = checkpoint_tensors(straight), checkpoint_tensors(resumed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_braces_in_a_folder_name_are_not_shards_and_unreadable_shards_stop(ws, tmp_path):
    from reasonclip_llava.pretrain.data import data_format

    odd = tmp_path / "data_{v2}"
    odd.mkdir()
    shutil.copy(ws["reasonlite"], odd / "train.parquet")
    config = load_config(recipe("stage1"), stage_args(ws, "stage1", tmp_path / "out", f"--data.train={odd / 'train.parquet'}"))
    assert data_format(config) == "parquet"
    assert data_format(load_config(recipe("stage1"), stage_args(ws, "stage1", tmp_path, "--data.train=s/{000..009}.tar"))) == "webdataset"

    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(2):
        (broken / f"shard-{i:03d}.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(ValueError, match=r"config key 'data.train': .*broken gave no usable batch in a whole epoch"):
        pretrain_from_yaml(recipe("stage1"), stage_args(ws, "stage1", tmp_path / "run", f"--data.train={broken}", "--schedule.max_steps=2"))


# ----------------------------------------------------------------------------------------- torch.compile
def test_compile_repeated_layers_keeps_names_and_outputs(ws):
    from reasonclip_llava.pretrain.trainer import compile_repeated_layers

    eager = ReasonCLIPForPretraining.from_pretrained(ws["clip"])
    compiled = ReasonCLIPForPretraining.from_pretrained(ws["clip"])
    before = list(compiled.state_dict())
    # backend="eager": dynamo captures each layer's graph (what can break) without inductor's codegen time.
    count = compile_repeated_layers(compiled.backbone, backend="eager")
    config = compiled.backbone.config
    assert count == config.vision_config.num_hidden_layers + config.text_config.num_hidden_layers
    assert list(compiled.state_dict()) == before  # checkpoints and optimizer groups see the same names
    pixels = torch.randn(2, 3, config.vision_config.image_size, config.vision_config.image_size)
    ids = torch.tensor([[49406, 320, 1125, 49407], [49406, 320, 49407, 49407]])
    torch.testing.assert_close(compiled.encode_image(pixels), eager.encode_image(pixels))
    torch.testing.assert_close(compiled.encode_text(ids, None)[0], eager.encode_text(ids, None)[0])
