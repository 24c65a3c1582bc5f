"""LLaVA-OneVision (`--arch llava_onevision`): the tower at the feature LLaVA-NeXT's OneVision reads, the token
count the model consumes, the published recipe values, and a ReasonCLIP SigLIP at So400M shape (meta device).

References, never our own output: a plain SiglipVisionModel's hidden_states[-2] (LLaVA-NeXT's SigLipVisionTower:
last layer and head deleted, hidden_states[-1]); the plain LlavaOnevision model's own packed feature lengths;
transformers' LlavaOnevisionConfig defaults (the llava-hf OneVision conversions: 26-layer tower, no head, the
36 (1x1)..(6x6) pinpoints); the values of LLaVA-VL/LLaVA-NeXT scripts/train/pretrain_siglip.sh and finetune_ov.sh.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    Qwen2Config,
    SiglipImageProcessor,
    SiglipVisionModel,
)
from transformers import processing_utils
from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING, AutoVideoProcessor
from transformers.utils import is_torchvision_available
from transformers.video_processing_utils import VideoProcessorMixin

from reasonclip_llava.mllm_train.train import LlavaTrainer, load_train_config, set_tunable_parts, training_arguments
from reasonclip_llava.testing.real_shapes import real_shape_config
from reasonclip_llava.vlm import build as build_module
from reasonclip_llava.vlm.architectures import ONEVISION_GRID, get_architecture, tokens_per_tile
from reasonclip_llava.vlm.build import build_llava, default_grid_pinpoints, resolve_grid_pinpoints

REPO = Path(__file__).resolve().parents[1]
ONEVISION = get_architecture("llava_onevision")
SO400M = "google/siglip-so400m-patch14-384"
# (height, width): tall, wide, square, very wide (downscaled by anyres_max_9 at this grid), large.
IMAGE_SIZES = [(50, 90), (90, 50), (32, 32), (20, 150), (200, 190)]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_processor(monkeypatch):
    """Where transformers cannot build LlavaOnevisionProcessor (it needs a torchvision video processor), build
    the model alone: everything below the processor is what these tests check."""
    if not is_torchvision_available():
        monkeypatch.setattr(type(ONEVISION), "build_processor", lambda self, *args: None)
        monkeypatch.setattr(type(ONEVISION), "check_available", lambda self: None)


def count_rule(image_processor, vision_config) -> types.SimpleNamespace:
    """The fields LlavaOnevisionProcessor counts with, and its own counting method bound to them (the processor
    itself needs torchvision here)."""
    ns = types.SimpleNamespace(image_processor=image_processor, num_image_tokens=tokens_per_tile(vision_config, "full"),
                               vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    ns._get_number_of_features = types.MethodType(LlavaOnevisionProcessor._get_number_of_features, ns)
    ns._get_unpadded_features = types.MethodType(LlavaOnevisionProcessor._get_unpadded_features, ns)
    return ns


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_siglip_dir):
    from reasonclip_llava.testing.tiny_lm import build_tiny_lm

    root = tmp_path_factory.mktemp("onevision")
    return dict(root=root, encoder=tiny_siglip_dir, lm=build_tiny_lm(root / "qwen2", family="qwen2"))


# ---- build: the tower, the feature, the grid ------------------------------------------------------------


def test_build_holds_the_tower_llava_next_reads_and_reloads_plainly(parts, no_processor, tmp_path):
    model, _ = build_llava(parts["lm"], parts["encoder"], arch="llava_onevision")
    config = model.config
    assert (config.vision_feature_layer, config.vision_feature_select_strategy, config.vision_aspect_ratio) == (-1, "full", "anyres_max_9")
    full = SiglipVisionModel.from_pretrained(parts["encoder"]).eval()
    assert config.vision_config.num_hidden_layers == full.config.num_hidden_layers - 1  # mm_vision_select_layer -2
    assert config.vision_config.vision_use_head is False and not hasattr(model.model.vision_tower, "head")
    assert config.image_grid_pinpoints == [[32 * i, 32 * j] for i in range(1, 7) for j in range(1, 7)]
    # every kept tensor is the encoder's, bitwise; nothing else is in the tower
    reference = {k: v for k, v in full.state_dict().items() if not k.startswith(("head.", "encoder.layers.2."))}
    tower = model.model.vision_tower.state_dict()
    assert tower.keys() == reference.keys() and all(torch.equal(tower[k], reference[k]) for k in reference)

    model.save_pretrained(tmp_path / "ov")
    reloaded, info = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "ov", output_loading_info=True)
    assert not any(info.values()), info  # strict: nothing missing, unexpected or mismatched
    image_processor = ONEVISION.image_processor(parts["encoder"], 32, image_aspect_ratio="anyres_max_9",
                                                image_grid_pinpoints=config.image_grid_pinpoints)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8))
    inputs = image_processor(images=[image], return_tensors="pt")
    seen = []
    reloaded.model.multi_modal_projector.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        reloaded.model.get_image_features(inputs["pixel_values"][0], inputs["image_sizes"])
        expected = full(inputs["pixel_values"][0], output_hidden_states=True).hidden_states[-2]  # all patches, no CLS
    assert seen[0].shape == expected.shape and torch.equal(seen[0], expected)


def test_pinpoints_are_the_published_grid_and_read_llava_next_strings():
    published = LlavaOnevisionConfig().image_grid_pinpoints  # the llava-hf OneVision grid at 384 px
    assert default_grid_pinpoints(384, ONEVISION_GRID) == published
    assert resolve_grid_pinpoints("(1x1),...,(6x6)", 384) == published
    assert resolve_grid_pinpoints("[[384, 768]]", 384) == [[384, 768]]
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        resolve_grid_pinpoints("(3x3),...,(1x1)", 384)
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        resolve_grid_pinpoints([[384]], 384)


def test_token_count_is_what_the_model_consumes(parts, no_processor):
    model, _ = build_llava(parts["lm"], parts["encoder"], arch="llava_onevision")
    image_processor = ONEVISION.image_processor(parts["encoder"], 32, image_aspect_ratio="anyres_max_9",
                                                image_grid_pinpoints=model.config.image_grid_pinpoints)
    rule = count_rule(image_processor, model.config.vision_config)
    bound, exact = ONEVISION.max_image_tokens(rule, "anyres_max_9")
    assert not exact
    counts = []
    for height, width in IMAGE_SIZES:
        image = Image.new("RGB", (width, height), (200, 30, 30))
        pixel_values, image_sizes, ours = ONEVISION.prepare_image(rule, image, "anyres_max_9")
        with torch.no_grad():
            packed = model.model.get_image_features(pixel_values, image_sizes[None]).pooler_output
        assert ours == packed[0].shape[0], (height, width)  # the plain model's own feature length
        assert ours == ONEVISION.num_image_tokens(rule, height, width, "anyres_max_9") <= bound
        counts.append(ours)
    assert len(set(counts)) == len(counts)  # the sizes exercise different grids / the downscale


def test_token_bound_holds_where_the_largest_count_is_not_a_pinpoint():
    """anyres_max_9 keeps an unpadded grid up to 1.1^2 x 9 tiles: off-pinpoint images can take more tokens
    than any pinpoint-shaped one, and the pre-pass bound must still cover them (384 px, 27 x 27 patches)."""
    from transformers import LlavaOnevisionImageProcessorPil

    published = LlavaOnevisionConfig()
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 384, "width": 384}, crop_size={"height": 384, "width": 384},
                                                      image_grid_pinpoints=published.image_grid_pinpoints)
    rule = count_rule(image_processor, published.vision_config)
    bound, _ = ONEVISION.max_image_tokens(rule, "anyres_max_9")
    at_pinpoints = max(ONEVISION.num_image_tokens(rule, h, w, "anyres_max_9") for h, w in published.image_grid_pinpoints)
    sweep = max(ONEVISION.num_image_tokens(rule, h, w, "anyres_max_9") for h in range(16, 2600, 37) for w in range(16, 2600, 41))
    assert at_pinpoints < sweep <= bound


@pytest.mark.skipif(is_torchvision_available(), reason="the refusal is for environments without torchvision")
def test_without_torchvision_the_build_stops_in_one_line_before_loading(parts, tmp_path, capsys):
    from reasonclip_llava.cli import main as cli_main

    out = tmp_path / "ov"
    assert cli_main(["llava-build", "--lm", str(parts["lm"]), "--encoder", str(parts["encoder"]), "--out", str(out),
                     "--arch", "llava_onevision"]) == 2
    assert "LlavaOnevisionProcessor needs a video processor, which needs torchvision" in capsys.readouterr().err
    assert not out.exists()


def test_onevision_takes_siglip_only(parts, tiny_clip_dir, no_processor):
    with pytest.raises(ValueError, match="llava_onevision.*siglip_vision_model tower, not clip_vision_model"):
        build_llava(parts["lm"], tiny_clip_dir, arch="llava_onevision")
    with pytest.raises(ValueError, match="architecture 'llava_onevision'.*takes anyres_max_9"):
        ONEVISION.resolve_image_flags("anyres", None)


# ---- recipes: LLaVA-NeXT's OneVision scripts ------------------------------------------------------------


def test_recipes_carry_the_published_values():
    pretrain = load_train_config(REPO / "train/llava_onevision_pretrain.yaml")  # scripts/train/pretrain_siglip.sh
    assert (pretrain.arch, pretrain.mm_tunable_parts, pretrain.learning_rate, pretrain.template) == (
        "llava_onevision", "mm_mlp_adapter", 1e-3, "plain")
    assert (pretrain.mm_vision_select_layer, pretrain.model_max_length, pretrain.per_device_train_batch_size) == (-2, 8192, 16)
    finetune = load_train_config(REPO / "train/llava_onevision_finetune.yaml")  # scripts/train/finetune_ov.sh
    assert finetune.tunable_parts == ["mm_vision_tower", "mm_mlp_adapter", "mm_language_model"]
    assert (finetune.learning_rate, finetune.mm_vision_tower_lr, finetune.mm_projector_lr) == (1e-5, 2e-6, None)
    assert (finetune.lr_scheduler_type, finetune.warmup_ratio, finetune.group_by_modality_length) == ("cosine", 0.03, True)
    assert (finetune.image_aspect_ratio, finetune.image_grid_pinpoints, finetune.mm_patch_merge_type) == (
        "anyres_max_9", "(1x1),...,(6x6)", "spatial_unpad")
    assert (finetune.template, finetune.model_max_length, finetune.mm_vision_select_layer) == ("qwen_1_5", 32768, -2)
    assert (finetune.per_device_train_batch_size, finetune.gradient_accumulation_steps, finetune.weight_decay) == (1, 2, 0.0)


def test_finetune_recipe_trains_the_tower_at_its_own_rate(parts, no_processor, tmp_path):
    model, _ = build_llava(parts["lm"], parts["encoder"], arch="llava_onevision")
    config = load_train_config(REPO / "train/llava_onevision_finetune.yaml", {
        "deepspeed": None, "bf16": False, "tf32": None, "output_dir": str(tmp_path / "run"), "report_to": "none"})
    set_tunable_parts(model, config.tunable_parts)
    trainer = LlavaTrainer(model=model, args=training_arguments(config), llava_config=config)
    names = {id(p): n for n, p in model.named_parameters()}
    rates = {}
    for group in trainer.create_optimizer().param_groups:
        for parameter in group["params"]:
            rates[names[id(parameter)]] = group["lr"]
    assert sorted(rates) == sorted(names.values())  # tower, projector, image_newline and LM all train
    for name, lr in rates.items():
        assert lr == pytest.approx(2e-6 if name.startswith("model.vision_tower.") else 1e-5), name


# ---- So400M shape, on the meta device ------------------------------------------------------------------


def meta_from_config(model_class, name_or_path, what, **kwargs):
    """load_pretrained_strict's stand-in for config-only dirs: the model built from its config, no weights."""
    config_class = getattr(model_class, "config_class", None) or AutoConfig
    config = config_class.from_pretrained(name_or_path)
    with torch.device("meta"):
        return model_class.from_config(config) if model_class.__name__.startswith("Auto") else model_class(config)


def so400m_dir(root: Path) -> Path:
    """A ReasonCLIP SigLIP export's files at So400M shape, weights left out (config + preprocessing)."""
    out = root / "so400m"
    real_shape_config(SO400M).save_pretrained(out)
    SiglipImageProcessor(size={"height": 384, "width": 384}).save_pretrained(out)
    return out


def test_so400m_tower_is_so400m_less_what_onevision_never_reads():
    so400m = real_shape_config(SO400M).vision_config.to_dict()
    with torch.device("meta"):
        tower = SiglipVisionModel(real_shape_config(SO400M).vision_config)
    tower, layer = ONEVISION.tower_for(tower, -2)
    built, published = tower.config.to_dict(), LlavaOnevisionConfig().vision_config.to_dict()
    assert layer == -1
    assert {k for k in so400m if built[k] != so400m[k]} == {"num_hidden_layers", "vision_use_head"}
    assert (so400m["num_hidden_layers"], built["num_hidden_layers"], built["vision_use_head"]) == (27, 26, False)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size", "vision_use_head"):
        assert built[key] == published[key], key  # the llava-hf OneVision tower
    hidden = tower(torch.empty(2, 3, 384, 384, device="meta"), output_hidden_states=True).hidden_states[-1]
    assert tuple(hidden.shape) == (2, 729, 1152) == (2, (384 // 14) ** 2, 1152)
    assert tokens_per_tile(tower.config, "full") == 729


def test_so400m_goes_through_both_stages_and_into_the_onevision_build(tmp_path, monkeypatch, capsys, no_processor):
    from pretrain_helpers import make_workspace
    from reasonclip_llava.cli import main as cli_main
    from reasonclip_llava.encoder import modeling, tower as tower_module
    from reasonclip_llava.testing.tiny_lm import build_tiny_tokenizer

    ws = make_workspace(tmp_path / "ws")
    encoder = so400m_dir(tmp_path)
    monkeypatch.setattr(modeling, "load_pretrained_strict", meta_from_config)
    params = 0
    for stage, data in (("stage1", ws["reasonlite"]), ("stage2", ws["reasonpro"])):
        argv = ["pretrain", str(REPO / f"train/{stage}_so400m.yaml"), "--dry-run", "--world-size=2",
                f"--model.name_or_path={encoder}", f"--model.tokenizer={ws['t5']}", f"--data.train={data}",
                "--data.image_root=", "--data.sources=", "--data.num_workers=0", "--data.batch_size=4",
                f"--runtime.output_dir={tmp_path / stage}"]
        capsys.readouterr()  # what the set-up printed (DeepSpeed's import notice before the CLI quiets it)
        assert cli_main(argv) == 0, capsys.readouterr().err
        plan = json.loads(capsys.readouterr().out)
        assert (plan["stage"], plan["model"]["family"]) == (stage, "siglip")
        params = params or plan["model"]["parameters"]
    assert params > 870e6  # So400M's image + text towers (878M), not a tiny stand-in

    lm = tmp_path / "qwen2_0.5b"  # Qwen2-0.5B-Instruct's shape, the LLM of llava-onevision-qwen2-0.5b
    Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                tie_word_embeddings=True).save_pretrained(lm)
    build_tiny_tokenizer("qwen2").save_pretrained(lm)
    monkeypatch.setattr(tower_module, "load_pretrained_strict", meta_from_config)
    monkeypatch.setattr(build_module, "load_pretrained_strict", meta_from_config)
    model, _ = build_llava(lm, encoder, arch="llava_onevision")
    vision = model.config.vision_config
    assert (vision.num_hidden_layers, vision.vision_use_head, vision.hidden_size, vision.image_size) == (26, False, 1152, 384)
    assert model.config.image_grid_pinpoints == LlavaOnevisionConfig().image_grid_pinpoints
    assert tuple(model.model.multi_modal_projector.linear_1.weight.shape) == (896, 1152)
    assert len(model.model.vision_tower.encoder.layers) == 26


# ---- end to end: both stages (full and LoRA), merge, plain reload, eval ------------------------------


class ImageOnlyVideoProcessor(VideoProcessorMixin):
    """Stands in for transformers' LlavaOnevisionVideoProcessor where torchvision is absent; refuses videos."""

    def preprocess(self, videos, **kwargs):
        raise AssertionError("the OneVision tests feed images only; the stand-in video processor was given videos")


# Saved under the real class's name, so the checkpoints these tests write name what a torchvision reader loads.
ImageOnlyVideoProcessor.__name__ = ImageOnlyVideoProcessor.__qualname__ = "LlavaOnevisionVideoProcessor"


@pytest.fixture(scope="module")
def video_processor():
    """The video processor the end-to-end tests run with, in both environments.

    With torchvision: the real LlavaOnevisionVideoProcessor, nothing replaced. Without it, transformers 5.25
    maps llava_onevision to no video processor (VIDEO_PROCESSOR_MAPPING gives {"torchvision": None}), so
    LlavaOnevisionProcessor can be neither built (our build_processor asks that lookup) nor loaded
    (`from_pretrained` resolves its `video_processor` attribute through AutoVideoProcessor, i.e. the same
    lookup). The stand-in is registered there with transformers' documented `AutoVideoProcessor.register`
    (config class -> video processor class): it replaces only the `video_processor` attribute of
    LlavaOnevisionProcessor. It subclasses VideoProcessorMixin, the class ProcessorMixin checks that attribute
    against by its top-level name (`check_argument_for_proper_class` -> `get_possibly_dynamic_module`); the
    torchvision build of transformers exports that name and this one does not, so the real class is exported
    for the test as well (nothing else). Images never touch it: LlavaOnevisionProcessor.__call__ sends `images` to the image
    processor and only `videos` to the video processor (ProcessorMixin._process_videos), and these tests
    pass no videos; its preprocess raises if anything does. The model classes, the image processor, the
    tokenizer and every load (`LlavaOnevisionForConditionalGeneration.from_pretrained`) stay plain.
    """
    if is_torchvision_available():
        yield ONEVISION.video_processor_class()
        return
    previous = VIDEO_PROCESSOR_MAPPING._extra_content.get(LlavaOnevisionConfig)
    AutoVideoProcessor.register(LlavaOnevisionConfig, ImageOnlyVideoProcessor, exist_ok=True)
    export = pytest.MonkeyPatch()
    export.setattr(processing_utils.transformers_module, "VideoProcessorMixin", VideoProcessorMixin, raising=False)
    try:
        yield ImageOnlyVideoProcessor
    finally:  # both are process-wide: later tests see transformers as it was
        export.undo()
        if previous is None:
            VIDEO_PROCESSOR_MAPPING._extra_content.pop(LlavaOnevisionConfig, None)
        else:
            VIDEO_PROCESSOR_MAPPING._extra_content[LlavaOnevisionConfig] = previous


E2E = dict(per_device_train_batch_size=2, max_steps=2, save_steps=100, report_to="none", warmup_ratio=0.0)


@pytest.fixture(scope="module")
def stages(parts, video_processor):
    """Stage A (projector, plain template) of a tiny OneVision build, and the data of both stages."""
    from llava_train_helpers import tiny_llava_stages
    from reasonclip_llava.mllm_train.train import LlavaTrainConfig, train_llava

    setup = tiny_llava_stages(parts["root"] / "e2e", parts["encoder"])
    stage_a = train_llava(LlavaTrainConfig(arch="llava_onevision", language_model=setup["lm"], vision_tower=setup["encoder"],
                                           template="plain", output_dir=str(setup["root"] / "a"), **setup["pretrain"], **E2E))
    return setup, stage_a


def answer_once(model_dir: Path, image_folder: str, out: Path) -> None:
    """`eval vqa`'s generation path on model_dir: one question, one answer row."""
    from reasonclip_llava.evaluation.benchmarks import VQAQuestion
    from reasonclip_llava.evaluation.generate import generate_answers

    questions = [VQAQuestion("q0", str(Path(image_folder) / "0.png"), "What colour is the square?", max_new_tokens=4)]
    rows = [json.loads(line) for line in generate_answers(model_dir, questions, out, batch_size=1, progress=False)
            .read_text().splitlines() if "header" not in line]
    assert [row["question_id"] for row in rows] == ["q0"]


@pytest.mark.slow
def test_both_stages_reload_plainly_and_answer(stages, video_processor, tmp_path):
    from reasonclip_llava.mllm_train.train import LlavaTrainConfig, train_llava
    from reasonclip_llava.vlm.tower_check import TOWER_CHECK_NAME, verify_vlm_tower

    setup, stage_a = stages
    recipe = load_train_config(REPO / "train/llava_onevision_finetune.yaml")
    stage_b = train_llava(LlavaTrainConfig(
        model_name_or_path=str(stage_a), template=recipe.template, mm_tunable_parts=recipe.mm_tunable_parts,
        learning_rate=1e-3, mm_vision_tower_lr=1e-3, output_dir=str(tmp_path / "b"), **setup["instruct"], **E2E))
    model, info = LlavaOnevisionForConditionalGeneration.from_pretrained(stage_b, output_loading_info=True)
    assert not any(info.values()), info
    processor = LlavaOnevisionProcessor.from_pretrained(stage_b)
    assert type(processor.video_processor) is video_processor
    # what a torchvision reader resolves the saved video processor to
    assert json.loads((stage_b / "processor_config.json").read_text())["video_processor"]["video_processor_type"] == \
        "LlavaOnevisionVideoProcessor"
    assert json.loads((stage_b / TOWER_CHECK_NAME).read_text())["bitwise_equal"]
    # verify at the projector input: stage A froze the (shorter) tower, so it reads the encoder's hidden_states[-2]
    verified = verify_vlm_tower(stage_a, setup["encoder"])
    assert (verified["verdict"], verified["ok"]) == ("equal", True), verified
    before = LlavaOnevisionForConditionalGeneration.from_pretrained(stage_a).model.vision_tower.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in model.model.vision_tower.state_dict().items())
    for height, width in IMAGE_SIZES:
        image = Image.new("RGB", (width, height), (30, 30, 220))
        inputs = processor(images=image, text="<image>\nWhat?", return_tensors="pt")
        ids = inputs["input_ids"]
        assert int((ids == processor.image_token_id).sum()) == ONEVISION.num_image_tokens(processor, height, width, "anyres_max_9")
        with torch.no_grad():  # the plain model's own packed feature length for this image
            packed = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
        assert int((ids == processor.image_token_id).sum()) == packed[0].shape[0]
    answer_once(stage_b, setup["instruct"]["image_folder"], tmp_path / "answers.jsonl")
    if video_processor is ImageOnlyVideoProcessor:  # the stand-in takes no videos
        with pytest.raises(AssertionError, match="images only"):
            processor(videos=[np.zeros((2, 32, 32, 3), np.uint8)], text="<video>\nWhat?", return_tensors="pt")


@pytest.mark.slow
def test_lora_stage_b_merges_reloads_plainly_and_answers(stages, video_processor, tmp_path, capsys):
    from safetensors.torch import load_file

    from reasonclip_llava.cli import main as cli_main
    from reasonclip_llava.mllm_train.train import NON_LORA_TRAINABLES, LlavaTrainConfig, train_llava
    from reasonclip_llava.vlm.tower_check import TOWER_CHECK_NAME

    setup, stage_a = stages
    recipe = load_train_config(REPO / "train/llava_onevision_finetune.yaml")  # tower, projector and LM (LoRA)
    run = train_llava(LlavaTrainConfig(
        model_name_or_path=str(stage_a), template=recipe.template, mm_tunable_parts=recipe.mm_tunable_parts,
        lora_enable=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-2, mm_vision_tower_lr=1e-3,
        output_dir=str(tmp_path / "lora"), **setup["instruct"], **E2E))
    adapter = load_file(run / "adapter_model.safetensors")
    assert adapter and all(".language_model." in name and "lora_" in name for name in adapter)
    side = load_file(run / NON_LORA_TRAINABLES)  # the parts trained outside LoRA, as the run saved them
    tower_side = {k[len("model.vision_tower."):]: v for k, v in side.items() if k.startswith("model.vision_tower.")}
    assert tower_side and "model.image_newline" in side and "model.multi_modal_projector.linear_1.weight" in side

    merged_dir = tmp_path / "merged"
    assert cli_main(["llava-merge", str(run), str(merged_dir)]) == 0, capsys.readouterr().err
    merged, info = LlavaOnevisionForConditionalGeneration.from_pretrained(merged_dir, output_loading_info=True)
    assert not any(info.values()), info  # strict: nothing missing, unexpected or mismatched
    assert not any("lora" in name for name in merged.state_dict())
    base = LlavaOnevisionForConditionalGeneration.from_pretrained(stage_a)
    # W_merged = W_base + (alpha / r) * B @ A, computed here from the adapter file
    prefix = "base_model.model.model.language_model.layers.0.self_attn.q_proj"
    delta = (8 / 4) * adapter[f"{prefix}.lora_B.weight"] @ adapter[f"{prefix}.lora_A.weight"]
    assert delta.abs().max() > 0
    expected = base.model.language_model.layers[0].self_attn.q_proj.weight + delta
    assert torch.allclose(merged.model.language_model.layers[0].self_attn.q_proj.weight, expected, atol=1e-6)
    # the tower is the trained one from the side file, bitwise, and not stage A's
    tower = merged.model.vision_tower.state_dict()
    assert tower.keys() == tower_side.keys() and all(torch.equal(tower[k], tower_side[k]) for k in tower)
    assert any(not torch.equal(base.model.vision_tower.state_dict()[k], v) for k, v in tower.items())
    assert json.loads((merged_dir / TOWER_CHECK_NAME).read_text())["bitwise_equal"]
    assert torch.equal(merged.model.multi_modal_projector.linear_1.weight, side["model.multi_modal_projector.linear_1.weight"])
    assert torch.equal(merged.model.image_newline, side["model.image_newline"])
    assert type(LlavaOnevisionProcessor.from_pretrained(merged_dir).video_processor) is video_processor
    answer_once(merged_dir, setup["instruct"]["image_folder"], tmp_path / "answers.jsonl")
