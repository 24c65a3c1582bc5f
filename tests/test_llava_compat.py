"""Drop-in proof: an exported ReasonCLIP checkpoint in original LLaVA and in transformers' LlavaNext."""

import os
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPVisionModel, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

from reasonclip_llava.encoder import ReasonCLIPForPretraining, ReasonCLIPVisionTower, export_encoder, load_vision_config
from reasonclip_llava.encoder.tower import load_vision_model

llava_builder = pytest.importorskip("llava.model.multimodal_encoder.builder")


@pytest.fixture(scope="module")
def exported(tiny_clip_dir, tmp_path_factory):
    model = ReasonCLIPForPretraining.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        for parameter in model.backbone.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    root = tmp_path_factory.mktemp("export")
    return export_encoder(model.save_pretrained(root / "ckpt", source=tiny_clip_dir), root / "ReasonCLIP-tiny")


@pytest.fixture(autouse=True)
def restore_llava_builder():
    """Each test starts and ends with LLaVA's own builder, whatever ran before in this process."""
    from reasonclip_llava.encoder.llava_compat import unregister_from_llava

    unregister_from_llava()
    yield
    unregister_from_llava()


def _llava_args(tower: str, **extra):
    return SimpleNamespace(mm_vision_tower=tower, vision_tower=tower, mm_vision_select_layer=-2, mm_vision_select_feature="patch", **extra)


def test_original_llava_builder_accepts_local_export_unchanged(exported):
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

    tower = llava_builder.build_vision_tower(_llava_args(str(exported)))
    assert isinstance(tower, CLIPVisionTower)  # LLaVA's own class: a plain CLIP checkpoint on disk
    images = torch.randn(2, 3, 32, 32)
    reference = CLIPVisionModel.from_pretrained(exported)(pixel_values=images, output_hidden_states=True).hidden_states[-2][:, 1:]
    assert torch.equal(tower(images), reference)


def _hub_cache_snapshot(cache_dir, repo_id, source_dir):
    """Lay out `source_dir` as a cached Hub repo, so a Hub id resolves offline (HF_HUB_OFFLINE=1)."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for path in source_dir.iterdir():
        os.symlink(path, snapshot / path.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


def test_registration_makes_llava_accept_reasonclip_hub_ids(exported, tmp_path, monkeypatch):
    from reasonclip_llava.encoder.llava_compat import register_with_llava

    cache = tmp_path / "hub"
    _hub_cache_snapshot(cache, "reasonclip-org/ReasonCLIP-tiny", exported)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("transformers.utils.hub.HF_HUB_CACHE", str(cache), raising=False)
    monkeypatch.setattr("transformers.utils.hub.TRANSFORMERS_CACHE", str(cache), raising=False)
    args = _llava_args("reasonclip-org/ReasonCLIP-tiny")
    with pytest.raises(ValueError, match="Unknown vision tower"):
        llava_builder.build_vision_tower(args)  # LLaVA's rule alone rejects the Hub id
    register_with_llava(aliases={"reasonclip-tiny-alias": exported})
    register_with_llava()  # idempotent
    tower = llava_builder.build_vision_tower(args)
    assert isinstance(tower, ReasonCLIPVisionTower) and tower.num_patches == 16
    alias_tower = llava_builder.build_vision_tower(_llava_args("reasonclip-tiny-alias"), delay_load=True)
    assert isinstance(alias_tower, ReasonCLIPVisionTower) and not alias_tower.is_loaded
    images = torch.randn(1, 3, 32, 32)
    assert torch.equal(tower(images), load_vision_model(exported)(pixel_values=images, output_hidden_states=True).hidden_states[-2][:, 1:])
    # other CLIP paths still go to LLaVA's own builder
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

    os.symlink(exported, tmp_path / "plain_clip")
    assert isinstance(llava_builder.build_vision_tower(_llava_args(str(tmp_path / "plain_clip"))), CLIPVisionTower)
    from reasonclip_llava.encoder.llava_compat import unregister_from_llava

    unregister_from_llava()
    with pytest.raises(ValueError, match="Unknown vision tower"):
        llava_builder.build_vision_tower(args)  # unregistered: LLaVA's own rule again


def test_original_llava_model_runs_with_exported_tower(exported):
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.model import LlavaLlamaForCausalLM
    from llava.model.language_model.llava_llama import LlavaConfig

    from reasonclip_llava.encoder.llava_compat import register_with_llava

    register_with_llava()
    config = LlavaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    model = LlavaLlamaForCausalLM(config)
    model_args = _llava_args(str(exported), pretrain_mm_mlp_adapter=None, mm_patch_merge_type="flat", mm_projector_type="mlp2x_gelu")
    model.get_model().initialize_vision_modules(model_args)
    assert model.config.mm_hidden_size == 32
    images = torch.randn(1, 3, 32, 32)
    input_ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 7, 9]])
    output = model(input_ids=input_ids, images=images, labels=torch.tensor([[-100, -100, -100, 7, 9]]))
    assert output.logits.shape == (1, 4 + 16, 64)  # 4 text tokens + 16 patch features
    assert torch.isfinite(output.loss)


def test_export_plugs_into_transformers_llava_next(exported):
    vision_config = load_vision_config(exported)
    assert vision_config.model_type == "clip_vision_model"
    text_config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    config = LlavaNextConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=63,
        image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    vision = load_vision_model(exported)
    missing, unexpected = model.model.vision_tower.load_state_dict(vision.state_dict(), strict=True)
    assert not missing and not unexpected
    pixel_values = torch.randn(1, 5, 3, 32, 32)  # base image + a 2x2 anyres grid
    image_sizes = torch.tensor([[64, 64]])
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=pixel_values, image_sizes=image_sizes, return_dict=True)
        tiles = model.model.vision_tower(pixel_values[0], output_hidden_states=True).hidden_states[-2][:, 1:]
        reference = vision(pixel_values=pixel_values[0], output_hidden_states=True).hidden_states[-2][:, 1:]
    assert torch.equal(tiles, reference)
    n_features = features.pooler_output[0].shape[0]
    input_ids = torch.tensor([[1, 2] + [63] * n_features + [3]])
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixel_values, image_sizes=image_sizes).logits
    assert logits.shape == (1, n_features + 3, 64) and torch.isfinite(logits).all()


# ---- SigLIP exports: every local one runs on our tower ---------------------------------------------


def _so400m_export(root):
    """A So400M/14-384-shaped SigLIP export, config only (the route and a delay_load tower read no weights)."""
    from transformers import SiglipVisionConfig

    SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                       image_size=384, patch_size=14).save_pretrained(root)
    return root


def test_local_siglip_export_builds_our_tower_in_installed_llava(tiny_siglip_dir, tmp_path):
    from transformers import SiglipVisionModel

    from reasonclip_llava.encoder.llava_compat import register_with_llava

    register_with_llava()
    tower = llava_builder.build_vision_tower(_llava_args(str(tiny_siglip_dir)))
    assert isinstance(tower, ReasonCLIPVisionTower)
    images = torch.randn(1, 3, 32, 32)
    reference = SiglipVisionModel.from_pretrained(tiny_siglip_dir)(pixel_values=images, output_hidden_states=True)
    assert torch.equal(tower(images), reference.hidden_states[-2])  # no CLS: every patch kept
    so400m = _so400m_export(tmp_path / "siglip-so400m-export")
    tower = llava_builder.build_vision_tower(_llava_args(str(so400m)), delay_load=True)
    assert isinstance(tower, ReasonCLIPVisionTower) and not tower.is_loaded
    assert (tower.hidden_size, tower.num_patches) == (1152, 729)


def test_tower_with_trained_weights_loads_at_once_under_delay_load(tiny_siglip_dir):
    """LLaVA-NeXT's towers (clip_encoder.py, siglip_encoder.py) load in __init__ despite delay_load when
    `unfreeze_mm_vision_tower` is set or `mm_tunable_parts` contains 'mm_vision_tower' (OneVision's stage 2),
    so that the checkpoint's trained tower weights have modules to go into."""
    def tower(**args):
        return ReasonCLIPVisionTower(tiny_siglip_dir, args=SimpleNamespace(mm_vision_select_layer=-2, **args), delay_load=True)

    assert tower(mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model").is_loaded
    assert tower(unfreeze_mm_vision_tower=True).is_loaded
    assert not tower(mm_tunable_parts="mm_mlp_adapter").is_loaded and not tower().is_loaded


# LLaVA-NeXT's builder module path and rule (llava/model/multimodal_encoder/{builder,clip_encoder,siglip_encoder}.py,
# LLaVA-VL/LLaVA-NeXT), restated: an existing path -> CLIPVisionTower, then a name containing 'siglip' ->
# SigLipVisionTower, whose config defaults are So400M/14-384.
_LLAVA_NEXT_STUB = {
    "llava/__init__.py": "",
    "llava/model/__init__.py": "",
    "llava/model/llava_arch.py": "from .multimodal_encoder.builder import build_vision_tower\n",
    "llava/model/multimodal_encoder/__init__.py": "",
    "llava/model/multimodal_encoder/clip_encoder.py": """\
class CLIPVisionTower:
    def __init__(self, vision_tower, args, delay_load=False):
        self.vision_tower_name = vision_tower
""",
    "llava/model/multimodal_encoder/siglip_encoder.py": """\
from transformers import PretrainedConfig


class SigLipVisionConfig(PretrainedConfig):
    model_type = "siglip_vision_model"

    def __init__(self, hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                 image_size=384, patch_size=14, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.intermediate_size, self.num_hidden_layers = hidden_size, intermediate_size, num_hidden_layers
        self.num_attention_heads, self.image_size, self.patch_size = num_attention_heads, image_size, patch_size


class SigLipVisionTower:
    def __init__(self, vision_tower, vision_tower_cfg, delay_load=False):
        self.vision_tower_name = vision_tower
""",
    "llava/model/multimodal_encoder/builder.py": """\
import os

from .clip_encoder import CLIPVisionTower
from .siglip_encoder import SigLipVisionTower


def build_vision_tower(vision_tower_cfg, **kwargs):
    vision_tower = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if os.path.exists(vision_tower) or vision_tower.startswith("openai") or vision_tower.startswith("laion"):
        return CLIPVisionTower(vision_tower, args=vision_tower_cfg, **kwargs)
    elif "siglip" in vision_tower:
        return SigLipVisionTower(vision_tower, vision_tower_cfg=vision_tower_cfg, **kwargs)
    raise ValueError(f"Unknown vision tower: {vision_tower}")
""",
}


@pytest.fixture
def stub_llava(tmp_path, monkeypatch):
    """Put a stub `llava` package tree first on sys.path (the installed llava-torch hidden meanwhile).

    Returns a writer: files (relative path -> source) -> the stub's root. On teardown our builder is
    unregistered from the stub and the real `llava` modules come back.
    """
    from reasonclip_llava.encoder.llava_compat import unregister_from_llava

    saved = {name: module for name, module in sys.modules.items() if name == "llava" or name.startswith("llava.")}
    for name in saved:
        del sys.modules[name]

    def write(files):
        root = tmp_path / "stub"
        for relative, source in files.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_text(source)
        monkeypatch.syspath_prepend(str(root))
        return root

    yield write
    unregister_from_llava()
    for name in [name for name in sys.modules if name == "llava" or name.startswith("llava.")]:
        del sys.modules[name]
    sys.modules.update(saved)


def test_llava_next_builder_routes_every_local_siglip_to_our_tower(stub_llava, tiny_siglip_dir, exported, tmp_path):
    """The routing decision only, on a stub of LLaVA-NeXT's builder module path (its real package does not
    import under transformers 5). That our tower gives LLaVA-NeXT's SigLipVisionTower features bitwise is
    shown against its real class by bench/llava_next_siglip_parity.py, not here."""
    from reasonclip_llava.encoder.llava_compat import register_with_llava, tower_route

    stub_llava(_LLAVA_NEXT_STUB)
    from llava.model.multimodal_encoder import builder

    so400m = _so400m_export(tmp_path / "siglip-so400m-export")
    renamed_clip = tmp_path / "plain_clip"
    os.symlink(exported, renamed_clip)
    # LLaVA-NeXT's own rule: every local path, SigLIP included, goes to its CLIP tower
    for path in (tiny_siglip_dir, so400m):
        assert type(builder.build_vision_tower(_llava_args(str(path)))).__name__ == "CLIPVisionTower"
    register_with_llava()
    for path in (tiny_siglip_dir, so400m):  # 32 px / 16 tokens and 384 px / 729 tokens alike
        assert tower_route(str(path)) == "reasonclip"
        tower = builder.build_vision_tower(_llava_args(str(path)), delay_load=True)
        assert isinstance(tower, ReasonCLIPVisionTower) and tower.vision_tower_name == str(path)
    from llava.model import llava_arch

    assert llava_arch.build_vision_tower is builder.build_vision_tower  # the reference llava_arch calls
    # not ours: a local CLIP export and a SigLIP Hub name keep LLaVA-NeXT's own classes
    assert tower_route(str(renamed_clip)) is None
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path / "not_a_tower")
    assert tower_route(str(tmp_path / "not_a_tower")) is None and tower_route(str(tmp_path / "empty_dir_absent")) is None
    assert type(builder.build_vision_tower(_llava_args(str(renamed_clip)))).__name__ == "CLIPVisionTower"
    hub_name = "google/siglip-so400m-patch14-384"
    assert type(builder.build_vision_tower(_llava_args(hub_name), delay_load=True)).__name__ == "SigLipVisionTower"


# ---- a `llava` that does not import: the real error, named ------------------------------------------


def test_register_names_the_import_error_llava_next_swallows(stub_llava):
    """LLaVA-NeXT's layout and its failure under transformers 5: llava/__init__ imports a class that
    llava/model/__init__ failed to import (it prints the error and goes on), because
    llava/model/multimodal_resampler/qformer.py imports a name transformers 5 removed."""
    from reasonclip_llava.encoder.llava_compat import register_with_llava

    qformer_import = "from transformers.modeling_utils import apply_chunking_to_forward\n"
    try:  # the reference message: Python's own, for the same statement in this environment
        exec(qformer_import, {})
    except ImportError as error:
        expected = f"llava.model.multimodal_resampler.qformer: ImportError: {error}"
    else:
        pytest.skip("this transformers still has apply_chunking_to_forward")
    stub_llava({
        "llava/__init__.py": "from .model import LlavaLlamaForCausalLM\n",
        "llava/model/__init__.py": (
            "try:\n    from .language_model.llava_llama import LlavaLlamaForCausalLM\n"
            "except Exception as e:\n    print(f'Failed to import llava_llama. Error: {e}')\n"),
        "llava/model/language_model/__init__.py": "",
        "llava/model/language_model/llava_llama.py": "from ..llava_arch import LlavaMetaModel\n",
        "llava/model/llava_arch.py": ("from .multimodal_encoder.builder import build_vision_tower\n"
                                      "from .multimodal_resampler.builder import build_vision_resampler\n"),
        "llava/model/multimodal_encoder/__init__.py": "",
        "llava/model/multimodal_encoder/builder.py": "def build_vision_tower(cfg, **kwargs):\n    pass\n",
        "llava/model/multimodal_resampler/__init__.py": "",
        "llava/model/multimodal_resampler/builder.py": "from .qformer import Qformer\n",
        "llava/model/multimodal_resampler/qformer.py": qformer_import,
    })
    with pytest.raises(ImportError) as raised:
        register_with_llava()
    message = str(raised.value)
    assert "\n" not in message and "not installed" not in message
    assert message.endswith(expected), message
    assert "llava" not in sys.modules  # no bare package left behind by the diagnosis: a retry runs llava/__init__ again


def test_register_says_not_installed_only_when_llava_itself_is_missing(stub_llava, monkeypatch, tmp_path):
    from reasonclip_llava.encoder.llava_compat import register_with_llava

    with monkeypatch.context() as hidden:  # a sys.path without llava-torch: Python's own "No module named 'llava'"
        hidden.setattr(sys, "path", [str(tmp_path)])
        with pytest.raises(ImportError, match="^LLaVA is not installed") as raised:
            register_with_llava()
    assert isinstance(raised.value.__cause__, ModuleNotFoundError) and raised.value.__cause__.name == "llava"
    stub_llava({"llava/__init__.py": "import reasonclip_absent_dependency\n"})  # a missing dependency is not a missing llava
    with pytest.raises(ImportError) as raised:
        register_with_llava()
    assert str(raised.value).endswith("llava: ModuleNotFoundError: No module named 'reasonclip_absent_dependency'")
