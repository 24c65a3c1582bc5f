"""The recipes as the authors published them: optimizer groups, --dry-run plan, SigLIP text, released checkpoints.

Every expected value below is written from ../shared/reference/METHOD.md and the authors' launch scripts
(ReasonCLIP scripts/train_*.sh + trainning/ft_clip_r_*.py, READ config/train_read_clip.yaml), never read
from our code.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import CLIPModel, SiglipModel

from pretrain_helpers import REPO, make_workspace, recipe, single_thread, stage_args
from reasonclip_llava.cli import main as cli_main
from reasonclip_llava.encoder import export_encoder, verify_export
from reasonclip_llava.encoder.modeling import HeadsConfig, ReasonCLIPForPretraining
from reasonclip_llava.pretrain.config import apply_global_batch, load_config
from reasonclip_llava.pretrain.optim import build_param_groups
from reasonclip_llava.pretrain.trainer import pretrain_from_yaml
from reasonclip_llava.testing.tiny import save_tiny_siglip, tiny_siglip_config

LN50 = math.log(50.0)
TRAIN = REPO / "train"
PUBLISHED_RECIPES = sorted(p.name for p in TRAIN.glob("*.yaml") if p.name.startswith(("stage", "read")))

# (lr, weight decay) per kind of parameter and stage. ReasonCLIP: the vision_model. / text_model. /
# logit_scale groups of ft_clip_r_*.py; a group without its own weight_decay takes AdamW's default
# (--weight_decay 0.05); everything else (projections, SigLIP logit_bias) is the default group at the main
# lr. READ: one lr, weight decay 0.1 except biases and LayerNorm (the HF Trainer rule, logit_scale decays).
PUBLISHED = {
    "stage0": {"vision": (1e-5, 0.05), "vision_bias": (1e-5, 0.05), "norm": (1e-5, 0.05), "text": (3e-5, 0.05),
               "logit_scale": (5e-4, 0.0), "projection": (1e-4, 0.05)},
    "stage1": {"vision": (1e-5, 0.0), "vision_bias": (1e-5, 0.0), "norm": (1e-5, 0.0), "text": (3e-5, 0.0),
               "logit_scale": (1e-4, 0.0), "projection": (1e-4, 0.05)},
    "stage2": {"vision": (1e-5, 0.05), "vision_bias": (1e-5, 0.05), "norm": (1e-5, 0.05), "text": (2e-5, 0.05),
               "logit_scale": (1e-4, 0.0), "projection": (1e-4, 0.05), "heads": (1.5e-3, 0.05)},
    "read": {"vision": (1e-5, 0.1), "vision_bias": (1e-5, 0.0), "norm": (1e-5, 0.0), "text": (1e-5, 0.1),
             "logit_scale": (1e-5, 0.1), "projection": (1e-5, 0.1), "heads": (1e-5, 0.1)},
}
# One real parameter name of each kind, in a transformers CLIPModel / SiglipModel (inside our wrapper).
NAMES = {
    "clip": {"vision": ["backbone.vision_model.encoder.layers.0.mlp.fc1.weight"],
             "vision_bias": ["backbone.vision_model.encoder.layers.0.mlp.fc1.bias"],
             "norm": ["backbone.vision_model.pre_layrnorm.weight"],
             "text": ["backbone.text_model.encoder.layers.0.self_attn.q_proj.weight"],
             "logit_scale": ["backbone.logit_scale"],
             "projection": ["backbone.visual_projection.weight", "backbone.text_projection.weight"]},
    "siglip": {"vision": ["backbone.vision_model.head.attention.in_proj_weight"],
               "vision_bias": ["backbone.vision_model.head.attention.in_proj_bias"],
               "norm": ["backbone.vision_model.post_layernorm.weight"],
               "text": ["backbone.text_model.head.weight"],  # SigLIP's text projection lives in text_model.
               "logit_scale": ["backbone.logit_scale"],
               "projection": ["backbone.logit_bias"]},
}
HEAD_NAMES = {"stage2": ["category_heads.text_head.weight", "category_heads.image_head.bias"], "read": ["recon_projector.weight"]}
# w(t) at p = 0, 0.2, 0.5, 0.8, 0.81, 1: 0.70 -> 0.50 -> 0.60 (CLIP), 0.6 -> 0.3 -> 0.5 (the SigLIP run).
W_AT = {"clip": [0.7, 0.7, 0.6, 0.5, 0.6, 0.6], "siglip": [0.6, 0.6, 0.45, 0.3, 0.5, 0.5]}


def published_anchor_count(model: torch.nn.Module) -> int:
    """The authors' anchor rule, written out: vision_model./text_model. minus projection / logit_."""
    return sum(1 for n, _ in model.named_parameters()
               if ("vision_model." in n or "text_model." in n) and "projection" not in n and "logit_" not in n)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    paths = make_workspace(tmp_path_factory.mktemp("published_ws"))
    paths["siglip"] = save_tiny_siglip(paths["work"] / "tiny_siglip")
    return paths


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def _dry_run(capsys, recipe_path: Path, overrides: list[str], params: list[str], world_size: int = 2) -> dict:
    argv = ["pretrain", str(recipe_path), "--dry-run", f"--world-size={world_size}", *(f"--param={p}" for p in params), *overrides]
    assert cli_main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _tiny_overrides(ws: dict, name: str, out: Path) -> list[str]:
    stage = name.split("_")[0]
    siglip = "so400m" in name
    args = [f"--model.name_or_path={ws['siglip' if siglip else 'clip']}", f"--runtime.output_dir={out}", "--data.image_root=",
            "--data.num_workers=0", "--data.sources=", f"--data.train={ws['reasonpro' if stage == 'stage2' else 'reasonlite']}"]
    if siglip:  # the tiny SigLIP saves no tokenizer; 16 text positions
        args += [f"--model.tokenizer={ws['t5']}", "--data.max_length=16"]
    if stage == "read":
        args += ["--data.global_batch_size=8", "--data.caption_columns=tb", f"--stage.t5_model={ws['t5']}", f"--stage.t5_tokenizer={ws['t5']}"]
    else:
        args.append("--data.batch_size=4")
    return args


@pytest.mark.parametrize("name", PUBLISHED_RECIPES)
def test_dry_run_of_every_recipe_gives_the_published_optimizer(ws, tmp_path, capsys, name):
    stage = name.split("_")[0]
    family = "siglip" if "so400m" in name else "clip"
    kinds = {kind: names for kind, names in NAMES[family].items()}
    if stage in HEAD_NAMES:
        kinds["heads"] = HEAD_NAMES[stage]
    plan = _dry_run(capsys, TRAIN / name, _tiny_overrides(ws, name, tmp_path), [n for names in kinds.values() for n in names])

    for kind, names in kinds.items():
        for param in names:
            got = plan["parameters"][param]
            assert (got["lr"], got["weight_decay"]) == pytest.approx(PUBLISHED[stage][kind]), f"{name}: {param} ({kind}) in {got}"
    optimizer = plan["optimizer"]
    assert (optimizer["betas"], optimizer["eps"], optimizer["max_grad_norm"]) == ([0.9, 0.999], 1e-8, 1.0)
    groups = optimizer["groups"]
    assert sum(g["parameters"] for g in groups) == plan["model"]["parameters"]  # every parameter trains, once

    accumulation = 1 if stage == "read" else 2  # train_*.sh: --gradient_accumulation_steps 2; READ: 1
    batch = plan["batch"]
    assert (batch["world_size"], batch["gradient_accumulation_steps"]) == (2, accumulation)
    assert batch["global"] == batch["per_device"] * 2 * accumulation
    samples = plan["data"]["samples_per_epoch"]
    assert samples == sum(source["samples"] for source in plan["data"]["sources"]) > 0
    schedule = plan["schedule"]
    epochs = 5 if stage == "read" else 1
    assert schedule["epochs"] == epochs and schedule["scheduler"] == "cosine"
    assert schedule["max_steps"] == (epochs * (samples // (batch["per_device"] * 2))) // accumulation
    # READ: 50 warmup steps; ReasonCLIP: warmup ratio 0.1, counted as transformers' Trainer does (ceil).
    assert schedule["warmup_steps"] == (50 if stage == "read" else math.ceil(0.1 * schedule["max_steps"]))

    if stage == "read":
        assert batch["global"] == 8 and plan["logit_scale_max"] in (None, pytest.approx(LN50))
    else:  # ln 50 before every forward, CLIP and SigLIP alike
        assert plan["logit_scale_max"] == pytest.approx(LN50)
    backbone = (SiglipModel if family == "siglip" else CLIPModel).from_pretrained(ws[family])
    assert plan["anchored_tensors"] == (published_anchor_count(backbone) if stage == "stage1" else 0)
    if stage == "stage1":
        assert list(plan["w_schedule"].values()) == pytest.approx(W_AT[family])
    assert plan["text"]["attention_mask_passed"] == (family == "siglip")


def test_read_global_batch_is_split_over_devices():
    config = load_config(TRAIN / "read_b32.yaml")
    apply_global_batch(config, 8)
    assert config.data.batch_size == 32  # 256 as ONE step over 8 devices
    with pytest.raises(ValueError, match="data.global_batch_size"):
        apply_global_batch(load_config(TRAIN / "read_b32.yaml"), 3)


@pytest.mark.parametrize("model_class, family", [(CLIPModel, "clip"), (SiglipModel, "siglip")])
def test_groups_select_every_parameter_by_name_as_the_authors_code(ws, model_class, family):
    """Stage 1 on all parameters: our groups equal the authors' substring selection written out here."""
    encoder = ReasonCLIPForPretraining.from_pretrained(ws[family])
    config = load_config(TRAIN / f"stage1_{'so400m' if family == 'siglip' else 'b32'}.yaml")

    def published(name: str) -> tuple[float, float]:
        if "vision_model." in name:
            return 1e-5, 0.0
        if "text_model." in name:
            return 3e-5, 0.0
        if "logit_scale" in name:
            return 1e-4, 0.0
        return 1e-4, 0.05  # the default group: AdamW's lr and weight_decay

    got = {n: (g["lr"], g["weight_decay"]) for g in build_param_groups(encoder, config.optim) for n in g["param_names"]}
    assert set(got) == {n for n, _ in encoder.named_parameters()}
    assert got == {n: published(n) for n, _ in encoder.named_parameters()}


def test_read_no_decay_rule_is_biases_and_layernorm(ws):
    encoder = ReasonCLIPForPretraining.from_pretrained(ws["clip"], heads=HeadsConfig(recon_dim=16))
    config = load_config(TRAIN / "read_b32.yaml")
    layer_norms = {f"{m}.{p}" for m, module in encoder.named_modules() if isinstance(module, torch.nn.LayerNorm) for p, _ in module.named_parameters()}
    got = {n: g["weight_decay"] for g in build_param_groups(encoder, config.optim) for n in g["param_names"]}
    assert got == {n: 0.0 if ("bias" in n or n in layer_norms) else 0.1 for n, _ in encoder.named_parameters()}


def test_group_config_errors_name_the_key(tmp_path):
    required = ["--model.name_or_path=m", "--data.train=d.parquet", f"--runtime.output_dir={tmp_path}"]
    with pytest.raises(ValueError, match="unknown config key 'optim.groups.lrr'"):
        load_config(None, [*required, "--optim.groups=[{name: v, match: [vision_model.], lrr: 1}]"])
    with pytest.raises(ValueError, match="optim.lr_vision.*optim.groups"):
        load_config(TRAIN / "stage1_b32.yaml", ["--optim.lr_vision=1e-3"])
    with pytest.raises(ValueError, match="optim.no_decay"):
        load_config(TRAIN / "stage1_b32.yaml", ["--optim.no_decay=biases"])
    config = load_config(None, [*required, "--optim.groups=[{name: vision, match: [vision_model.], lr: 2e-5}]"])
    assert (config.optim.groups[0].lr, config.optim.groups[0].weight_decay) == (2e-5, None)


def test_t5_dropout_option(ws):
    from reasonclip_llava.pretrain.trainer import load_t5_decoder

    on = load_t5_decoder(load_config(recipe("read"), stage_args(ws, "read", ws["work"], "--stage.t5_dropout=true")))
    off = load_t5_decoder(load_config(recipe("read"), stage_args(ws, "read", ws["work"])))
    assert on.training and on.decoder.dropout.training and not off.training
    assert load_config(TRAIN / "read_b32.yaml").stage.t5_dropout  # published: the decoder in train mode
    assert load_config(TRAIN / "read_b32.yaml").stage.t5_tokenizer == "google/flan-t5-xl"


# ----------------------------------------------------------------------------------------- SigLIP 2 text
@pytest.fixture(scope="module")
def tiny_siglip2(ws):
    """A tiny fixed-resolution SigLIP 2-style checkpoint ("siglip2" in its name, 64 text positions) with a
    case-SENSITIVE word-level tokenizer, plus JSONL rows of mixed-case captions over the workspace's images."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SiglipImageProcessor

    out = ws["work"] / "tiny_siglip2-so16"
    torch.manual_seed(0)
    config = tiny_siglip_config()
    config.text_config.max_position_embeddings = 64
    SiglipModel(config).save_pretrained(out)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    captions = ["A Red Circle LEFT of a blue Square", "the Green triangle Above A red circle", "A Blue square and a GREEN Circle",
                "a red Square Right of The blue triangle", "The Circle is Green", "A small RED triangle"]
    words = sorted({w for c in captions for w in c.split()} | {w.lower() for c in captions for w in c.split()})
    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="</s>", eos_token="</s>",
                            model_max_length=64).save_pretrained(out)
    images = sorted((ws["reasonlite"].parent / "images").glob("*.png"))[: len(captions)]
    rows = out.parent / "siglip2_rows.jsonl"
    rows.write_text("".join(json.dumps({"image_path": str(img), "tb": [c], "trl": [c]}) + "\n" for img, c in zip(images, captions)))
    return out, rows, captions


def test_siglip2_text_is_lowercased_padded_to_64_and_masked_like_plain_siglip(tiny_siglip2, tmp_path):
    from transformers import AutoTokenizer

    from reasonclip_llava.pretrain.data import build_train_data
    from reasonclip_llava.pretrain.objective import StageObjective

    model_dir, rows, captions = tiny_siglip2
    config = load_config(TRAIN / "stage0_descriptive_so400m.yaml", [
        f"--model.name_or_path={model_dir}", f"--data.train={rows}", "--data.image_root=", "--data.batch_size=4",
        "--data.num_workers=0", "--data.holdout_ratio=0", f"--runtime.output_dir={tmp_path}"])
    encoder = ReasonCLIPForPretraining.from_pretrained(model_dir).eval()
    batch = next(build_train_data(config, encoder, 1, 0).batches(torch.device("cpu")))
    ours = StageObjective(encoder, config.stage, 10, LN50).text_embeddings(batch, ["caption"])[0][0]

    texts = [captions[i] for i in batch["indices"].tolist()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lowered = tokenizer([t.lower() for t in texts], padding="max_length", max_length=64, return_tensors="pt")
    assert torch.equal(batch["caption_input_ids"], lowered["input_ids"]) and batch["caption_input_ids"].shape[1] == 64
    as_written = tokenizer(texts, padding="max_length", max_length=64, return_tensors="pt")["input_ids"]
    assert not torch.equal(as_written, lowered["input_ids"])  # the captions' case does reach this tokenizer

    plain = SiglipModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        reference = plain(input_ids=lowered["input_ids"], attention_mask=lowered["attention_mask"], pixel_values=batch["pixel_values"]).text_embeds
        unmasked = plain(input_ids=lowered["input_ids"], pixel_values=batch["pixel_values"]).text_embeds
    torch.testing.assert_close(F.normalize(ours.detach(), dim=-1), reference, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(unmasked, reference, atol=1e-4)  # the mask changes the result: passing it matters


# ----------------------------------------------------------------------------------------- released checkpoints
@pytest.fixture(scope="module")
def released_stage2(ws):
    """A stage-2 checkpoint as the authors release it: CLIPModel weights in bf16 plus text_classifier.* /
    image_classifier.* (Linear(embed_dim, 5) each) inside model.safetensors."""
    out = ws["work"] / "released_s2"
    CLIPModel.from_pretrained(ws["clip"]).to(torch.bfloat16).save_pretrained(out)
    weights = load_file(str(out / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for head in ("text_classifier", "image_classifier"):
        weights[f"{head}.fc.weight"] = torch.randn(5, 24, generator=g).bfloat16()
        weights[f"{head}.fc.bias"] = torch.randn(5, generator=g).bfloat16()
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(ws["clip"] / name, out / name)
    return out


HEAD_KEYS = ["image_classifier.fc.bias", "image_classifier.fc.weight", "text_classifier.fc.bias", "text_classifier.fc.weight"]


def test_released_stage2_checkpoint_is_a_start_point(ws, released_stage2, tmp_path):
    released = load_file(str(released_stage2 / "model.safetensors"))
    model = ReasonCLIPForPretraining.from_pretrained(released_stage2, heads=HeadsConfig(category_heads=True))
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # fp32 master weights from a bf16 release
    assert torch.equal(model.category_heads.text_head.weight, released["text_classifier.fc.weight"].float())
    assert torch.equal(model.category_heads.image_head.bias, released["image_classifier.fc.bias"].float())
    assert torch.equal(model.backbone.visual_projection.weight, released["visual_projection.weight"].float())
    final = pretrain_from_yaml(recipe("stage2"), stage_args(ws, "stage2", tmp_path, "--schedule.max_steps=1", "--runtime.save_every=0",
                                                            model=released_stage2))
    assert not set(HEAD_KEYS) & set(load_file(str(final / "model.safetensors")))  # ours go to heads.safetensors
    assert "category_heads.text_head.weight" in load_file(str(final / "heads.safetensors"))


def test_released_stage2_checkpoint_exports_without_heads_and_verify_names_them(ws, released_stage2, tmp_path):
    report = verify_export(released_stage2, ws["clip"])
    assert report["ok"], report["failed"]
    assert report["findings"]["training_only_tensors"]["tensors"] == HEAD_KEYS
    out = export_encoder(released_stage2, tmp_path / "export")
    exported = load_file(str(out / "model.safetensors"))
    assert set(exported) == set(CLIPModel(CLIPModel.config_class.from_pretrained(ws["clip"])).state_dict())
    released = load_file(str(released_stage2 / "model.safetensors"))
    assert all(torch.equal(exported[k], released[k].float()) for k in exported)
    assert verify_export(out, ws["clip"])["findings"] == {}


def test_released_stage2_checkpoint_builds_and_swaps_into_llava(ws, released_stage2, tmp_path):
    from transformers import LlavaNextForConditionalGeneration

    from reasonclip_llava.vlm.build import build_and_save
    from reasonclip_llava.vlm.swap import swap_vision_tower
    from reasonclip_llava.testing.tiny_lm import build_tiny_lm

    lm = build_tiny_lm(tmp_path / "lm")
    released = load_file(str(released_stage2 / "model.safetensors"))
    expected = {k.removeprefix("vision_model."): v.float() for k, v in released.items() if k.startswith("vision_model.")}
    built = build_and_save(lm, released_stage2, tmp_path / "built")
    swapped = swap_vision_tower(build_and_save(lm, ws["clip"], tmp_path / "plain"), released_stage2, tmp_path / "swapped")
    for path in (built, swapped):
        tower = LlavaNextForConditionalGeneration.from_pretrained(path).model.vision_tower.state_dict()
        tower = {k.removeprefix("vision_model."): v for k, v in tower.items()}
        assert set(tower) == set(expected) and all(torch.equal(tower[k], expected[k]) for k in expected)


def test_dry_run_errors_are_one_line_naming_the_problem(ws, tmp_path, capsys):
    overrides = _tiny_overrides(ws, "read_b32.yaml", tmp_path)
    assert cli_main(["pretrain", str(TRAIN / "read_b32.yaml"), "--dry-run", "--param=backbone.nope", *overrides]) == 2
    assert "--param 'backbone.nope': no trainable parameter of that name" in capsys.readouterr().err
    published_tokenizer = [o for o in overrides if not o.startswith("--stage.t5_tokenizer")]  # google/flan-t5-xl, offline
    assert cli_main(["pretrain", str(TRAIN / "read_b32.yaml"), "--dry-run", *published_tokenizer]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "reasonclip pretrain: error: config key 'stage.t5_tokenizer': cannot load a T5 tokenizer from 'google/flan-t5-xl'"
