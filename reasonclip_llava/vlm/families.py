"""The transformers VLM families that take a plain CLIP / SigLIP vision tower 1:1, in one table.

For every family here the encoder's `vision_model.X` is the tower's `<tower path>.X` (transformers 5.x
CLIPVisionModel / SiglipVisionModel are flat, so a loaded encoder's state dict is already `X`); the
Idefics-family towers are SigLIP without the attention-pool head (`head.*` dropped). Each adapter says
where its tower(s) sit, which encoder family it takes (by the tower's `vision_config.model_type`), what its
projector reads (the feature rule), how to make probe inputs for `get_image_features`, and its processor's
normalisation fields. Measured facts: docs/reference VLM.md. Anything else is refused in one line naming
the model type and the tower type: those VLMs carry their own ViT.

  encoder_tower_state(encoder, family, tower_config)  the encoder's weights under the tower's names,
      onto a tower that may be shorter than the encoder when the VLM never reads the missing layers
      (LLaVA-NeXT's SigLipVisionTower and the llava-hf OneVision conversions: so400m minus its last layer,
      no head, read at hidden_states[-1]).
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel

# Tower vision model_type -> (the encoder's vision model_type it takes, the tower's transformers class name).
TOWER_TYPES: dict[str, tuple[str, str]] = {
    "clip_vision_model": ("clip_vision_model", "CLIPVisionModel"),
    "siglip_vision_model": ("siglip_vision_model", "SiglipVisionModel"),
    "idefics2_vision": ("siglip_vision_model", "idefics2.modeling_idefics2.Idefics2VisionTransformer"),
    "idefics3_vision": ("siglip_vision_model", "idefics3.modeling_idefics3.Idefics3VisionTransformer"),
    "smolvlm_vision": ("siglip_vision_model", "smolvlm.modeling_smolvlm.SmolVLMVisionTransformer"),
}
ENCODER_NAMES = {"clip_vision_model": "CLIP", "siglip_vision_model": "SigLIP"}
# Known VLMs with their own vision transformer (no shared names with CLIP / SigLIP): why they are refused.
OWN_VIT = {
    "mistral3": "Pixtral ViT", "pixtral": "Pixtral ViT", "qwen2_vl": "Qwen2-VL ViT", "qwen2_5_vl": "Qwen2.5-VL ViT",
    "qwen3_vl": "Qwen3-VL ViT", "qwen3_vl_moe": "Qwen3-VL ViT", "internvl": "InternViT", "llama4": "Llama 4 ViT",
    "llava_onevision_1_5": "RICE-ViT", "glm4v": "GLM-4V ViT", "phi4_multimodal": "Phi-4 ViT",
    "janus": "Janus SigLIP variant (projection_layer for out_proj; 341 of 389 names)",
    "lfm2_vl": "SigLIP 2 NaFlex (Linear patch embedding, other position count)",
    "siglip2_vision_model": "SigLIP 2 NaFlex", "timm_wrapper": "timm ViT",
}
# Fields that decide the tower's tensors and computation; depth and model_type are checked separately.
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_channels", "image_size",
                "patch_size", "hidden_act", "layer_norm_eps")
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")


@dataclass(frozen=True)
class FeatureRule:
    """What the projector reads from a tower: hidden_states at `layers` (concatenated when several, CLS
    dropped when `drop_cls`), or the tower's `last_hidden_state` (after post_layernorm) when layers is None."""

    layers: tuple[int, ...] | None
    drop_cls: bool = False

    @property
    def reads_last_hidden_state(self) -> bool:
        return self.layers is None

    def describe(self) -> str:
        if self.layers is None:
            return "last_hidden_state"
        select = "[:, 1:]" if self.drop_cls else ""
        parts = [f"hidden_states[{layer}]{select}" for layer in self.layers]
        return parts[0] if len(parts) == 1 else f"cat({', '.join(parts)}; dim=-1)"

    def absolute(self, depth: int) -> FeatureRule:
        """The same rule with layer indices counted from the input (hidden_states[0]) of a `depth`-layer tower."""
        if self.layers is None:
            return self
        return FeatureRule(tuple(layer if layer >= 0 else depth + 1 + layer for layer in self.layers), self.drop_cls)

    def apply(self, outputs: Any) -> torch.Tensor:
        """The rule on a vision model's output (called with output_hidden_states=True)."""
        if self.layers is None:
            return outputs.last_hidden_state
        states = [outputs.hidden_states[layer] for layer in self.layers]
        if self.drop_cls:
            states = [state[:, 1:] for state in states]
        return states[0] if len(states) == 1 else torch.cat(states, dim=-1)


@dataclass
class Probe:
    """Probe inputs: keyword arguments of `model.model.get_image_features` (one call per tower) and of generate."""

    image_kwargs: dict[str, Any]
    generate_kwargs: dict[str, Any]
    video_kwargs: dict[str, Any] | None = None  # VideoLlava's video tower: get_video_features


@dataclass(frozen=True)
class VLMFamily:
    """One family: a transformers VLM class that holds a CLIP / SigLIP tower."""

    name: str
    model_types: tuple[str, ...]
    class_name: str
    tower_types: tuple[str, ...]  # accepted vision_config.model_type
    tower_paths: tuple[str, ...] = ("model.vision_tower",)
    projector_path: str = "model.multi_modal_projector"
    rule_kind: str = "layer"  # layer: vision_feature_layer + strategy; vipllava: layers, CLS dropped; last
    probe_kind: str = "image"  # image: 4-D; tiles: 5-D + image_sizes; idefics: 5-D + mask; video_llava
    normalisation_fields: tuple[str, ...] = ("image_mean", "image_std")
    title: str = ""
    all_tokens_towers: tuple[str, ...] = ()  # towers read with every token whatever the strategy (VideoLlava's video)

    @property
    def model_class(self) -> type[PreTrainedModel]:
        return getattr(transformers, self.class_name)

    @property
    def config_class(self) -> type[PretrainedConfig]:
        return self.model_class.config_class

    def feature_rule(self, config: PretrainedConfig, tower_path: str | None = None) -> FeatureRule:
        """What this family's projector reads from a tower (default: the first), from the VLM config."""
        if self.rule_kind == "last":
            return FeatureRule(None)
        if self.rule_kind == "vipllava":
            return FeatureRule(tuple(config.vision_feature_layers), drop_cls=True)
        layer = config.vision_feature_layer
        layers = (layer,) if isinstance(layer, int) else tuple(layer)
        drop_cls = config.vision_feature_select_strategy == "default" and tower_path not in self.all_tokens_towers
        return FeatureRule(layers, drop_cls=drop_cls)

    def towers(self, model: PreTrainedModel) -> dict[str, torch.nn.Module]:
        """{tower path: module} of a model of this family (a PeftModel is unwrapped)."""
        model = model.get_base_model() if hasattr(model, "get_base_model") else model
        return {path: model.get_submodule(path) for path in self.tower_paths}

    def projector(self, model: PreTrainedModel) -> torch.nn.Module:
        model = model.get_base_model() if hasattr(model, "get_base_model") else model
        return model.get_submodule(self.projector_path)

    def probe_inputs(self, config: PretrainedConfig, seed: int = 0, images: int = 2) -> Probe:
        """Random pixels of the tower's size in the form this family's get_image_features takes."""
        size = config.vision_config.image_size
        generator = torch.Generator().manual_seed(seed)

        def pixels(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, 3, size, size, generator=generator)

        if self.probe_kind == "tiles":
            from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

            tiles = image_size_to_num_patches((size, size), config.image_grid_pinpoints, size)
            image_sizes = torch.tensor([[size, size]])
            kwargs = {"pixel_values": pixels(1, tiles), "image_sizes": image_sizes}
            return Probe(kwargs, dict(kwargs))
        if self.probe_kind == "idefics":
            values = pixels(1, 1)
            mask = torch.ones(1, 1, size, size, dtype=torch.bool)
            kwargs = {"pixel_values": values, "pixel_attention_mask": mask}
            return Probe(kwargs, dict(kwargs))
        if self.probe_kind == "video_llava":
            values = pixels(1)
            return Probe({"pixel_values": values}, {"pixel_values_images": values},
                         video_kwargs={"pixel_values_videos": pixels(1, 8)})
        values = pixels(1)
        return Probe({"pixel_values": values}, {"pixel_values": values})

    def feature_calls(self, model: PreTrainedModel, probe: Probe) -> dict[str, Callable[[], Any]]:
        """{tower path: a call that runs that tower and the projector on the probe} (VideoLlava: two)."""
        inner = (model.get_base_model() if hasattr(model, "get_base_model") else model).model
        calls = {self.tower_paths[0]: lambda: inner.get_image_features(**probe.image_kwargs)}
        if probe.video_kwargs is not None:
            calls[self.tower_paths[1]] = lambda: inner.get_video_features(**probe.video_kwargs)
        return calls


def _family(name: str, class_name: str, tower_types: tuple[str, ...], title: str, **fields: Any) -> VLMFamily:
    return VLMFamily(name=name, model_types=(name,), class_name=class_name, tower_types=tower_types, title=title,
                     **fields)


_CLIP_SIGLIP = ("clip_vision_model", "siglip_vision_model")
_SIGLIP = ("siglip_vision_model",)
FAMILIES: dict[str, VLMFamily] = {family.name: family for family in (
    _family("llava", "LlavaForConditionalGeneration", _CLIP_SIGLIP, "LLaVA-1.5"),
    _family("llava_next", "LlavaNextForConditionalGeneration", _CLIP_SIGLIP, "LLaVA-NeXT", probe_kind="tiles"),
    _family("llava_next_video", "LlavaNextVideoForConditionalGeneration", ("clip_vision_model",), "LLaVA-NeXT-Video",
            probe_kind="tiles"),
    _family("llava_onevision", "LlavaOnevisionForConditionalGeneration", _SIGLIP, "LLaVA-OneVision",
            probe_kind="tiles"),
    _family("vipllava", "VipLlavaForConditionalGeneration", ("clip_vision_model",), "ViP-LLaVA", rule_kind="vipllava"),
    _family("video_llava", "VideoLlavaForConditionalGeneration", ("clip_vision_model",), "Video-LLaVA",
            tower_paths=("model.image_tower", "model.video_tower"), probe_kind="video_llava",
            all_tokens_towers=("model.video_tower",)),
    _family("paligemma", "PaliGemmaForConditionalGeneration", _SIGLIP, "PaliGemma", rule_kind="last"),
    _family("gemma3", "Gemma3ForConditionalGeneration", _SIGLIP, "Gemma 3", rule_kind="last"),
    _family("aya_vision", "AyaVisionForConditionalGeneration", _SIGLIP, "Aya Vision"),
    _family("cohere2_vision", "Cohere2VisionForConditionalGeneration", _SIGLIP, "Command A Vision", rule_kind="last"),
    _family("deepseek_vl", "DeepseekVLForConditionalGeneration", _SIGLIP, "DeepSeek-VL", rule_kind="last",
            tower_paths=("model.vision_model",), projector_path="model.aligner"),
    _family("idefics2", "Idefics2ForConditionalGeneration", ("idefics2_vision",), "Idefics2", rule_kind="last",
            tower_paths=("model.vision_model",), projector_path="model.connector", probe_kind="idefics"),
    _family("idefics3", "Idefics3ForConditionalGeneration", ("idefics3_vision",), "Idefics3", rule_kind="last",
            tower_paths=("model.vision_model",), projector_path="model.connector", probe_kind="idefics"),
    _family("smolvlm", "SmolVLMForConditionalGeneration", ("smolvlm_vision",), "SmolVLM", rule_kind="last",
            tower_paths=("model.vision_model",), projector_path="model.connector", probe_kind="idefics"),
)}


def get_family(model_type: str) -> VLMFamily:
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise ValueError(f"model_type {model_type!r} is not a registered VLM family ({', '.join(FAMILIES)})")


def checkpoint_types(source: str | Path) -> tuple[str | None, str | None, str]:
    """(model_type, vision_config.model_type, origin) from a checkpoint's config.json, without building it."""
    config_file = Path(source) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no VLM checkpoint (config.json) in {source}")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file}: not valid JSON ({error.msg})") from None
    return raw.get("model_type"), (raw.get("vision_config") or {}).get("model_type"), str(source)


def family_of(source: str | Path | PretrainedConfig | PreTrainedModel) -> VLMFamily:
    """The family of a checkpoint dir, config or model; one line naming the model and tower types otherwise."""
    if isinstance(source, (str, Path)):
        model_type, tower_type, origin = checkpoint_types(source)
    else:
        config = source if isinstance(source, PretrainedConfig) else source.config
        vision = getattr(config, "vision_config", None)
        model_type, tower_type, origin = config.model_type, getattr(vision, "model_type", None), type(source).__name__
    family = next((f for f in FAMILIES.values() if model_type in f.model_types), None)
    supported = ", ".join(FAMILIES)
    if family is None:
        why = OWN_VIT.get(model_type) or OWN_VIT.get(str(tower_type))
        if why is None:
            raise ValueError(f"{origin}: model_type {model_type!r} (tower {tower_type!r}) is not a VLM family that "
                             f"takes a CLIP/SigLIP tower; expected one of {supported}")
        raise ValueError(f"{origin}: model_type {model_type!r} with tower {tower_type!r} ({why}): own ViT, not a "
                         f"CLIP/SigLIP tower; swap/verify take {supported}")
    if tower_type not in family.tower_types:
        why = OWN_VIT.get(str(tower_type), "not a CLIP/SigLIP tower")
        raise ValueError(f"{origin}: model_type {model_type!r} with tower {tower_type!r} ({why}): own ViT, not a "
                         f"CLIP/SigLIP tower; {family.class_name} is taken with a {' / '.join(family.tower_types)} tower")
    return family


# ---- encoder -> tower ----------------------------------------------------------------------------------


@dataclass
class TowerMap:
    """The encoder's tensors under the tower's names, and what was left out (and why it may be)."""

    state: dict[str, torch.Tensor]
    dropped: list[str] = field(default_factory=list)
    encoder_layers: int = 0
    tower_layers: int = 0


def tower_class(tower_config: PretrainedConfig) -> type[torch.nn.Module]:
    if tower_config.model_type not in TOWER_TYPES:
        raise ValueError(f"tower model_type {tower_config.model_type!r} is not a CLIP/SigLIP tower ({', '.join(TOWER_TYPES)})")
    module, _, name = TOWER_TYPES[tower_config.model_type][1].rpartition(".")
    return getattr(importlib.import_module(f"transformers.models.{module}") if module else transformers, name)


def tower_shapes(tower_config: PretrainedConfig) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of a tower built from `tower_config` (on the meta device: no memory)."""
    with torch.device("meta"):
        tower = tower_class(tower_config)(tower_config)
    return {name: tuple(tensor.shape) for name, tensor in tower.state_dict().items()}


def fit_mismatch(encoder_config: PretrainedConfig, tower_config: PretrainedConfig) -> str | None:
    """The first field that keeps the encoder out of the tower, as 'tower value vs encoder value'
    ('image_size 896 vs 384'), else None."""
    taken = TOWER_TYPES.get(tower_config.model_type, (None,))[0]
    if encoder_config.model_type != taken:
        extra = "" if taken == tower_config.model_type else f" (the tower takes {taken} encoders)"
        return f"model_type {tower_config.model_type} vs {encoder_config.model_type}{extra}"
    for name in SHAPE_FIELDS:
        tower, encoder = getattr(tower_config, name, None), getattr(encoder_config, name, None)
        if tower is not None and encoder is not None and tower != encoder:
            return f"{name} {tower} vs {encoder}"
    return None


def _encoder_state(encoder: str | Path | dict[str, torch.Tensor] | PreTrainedModel,
                   ) -> tuple[dict[str, torch.Tensor], PretrainedConfig | None]:
    if isinstance(encoder, dict):
        return {name.removeprefix("vision_model."): tensor for name, tensor in encoder.items()}, None
    if isinstance(encoder, PreTrainedModel):  # an already loaded CLIPVisionModel / SiglipVisionModel
        return {name: tensor.detach() for name, tensor in encoder.state_dict().items()}, encoder.config
    from ..encoder.tower import load_vision_model

    model = load_vision_model(encoder)
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}, model.config


def map_encoder_to_tower(encoder: str | Path | dict[str, torch.Tensor] | PreTrainedModel, family: VLMFamily,
                         vlm_config: PretrainedConfig, what: str = "encoder") -> TowerMap:
    """The encoder (dir, loaded vision model, or a vision state dict) as a state dict for `vlm_config`'s tower; one line otherwise.

    Dropped without error: `head.*` when the tower has none (Idefics towers, vision_use_head=False) -- no
    family reads the pooled output -- and encoder layers past the tower's depth when the family's rule reads
    hidden_states (a shorter tower read at hidden_states[-1] is the encoder's hidden_states[-2]). Refused:
    a shape / patch / image-size mismatch (no interpolation), an encoder shallower than the tower, a shorter
    tower whose rule reads last_hidden_state (the encoder's final layer is missing from what the VLM reads).
    """
    tower_config = vlm_config.vision_config
    state, encoder_config = _encoder_state(encoder)
    who = f"{what} {encoder}" if isinstance(encoder, (str, Path)) else what
    if encoder_config is not None:
        mismatch = fit_mismatch(encoder_config, tower_config)
        if mismatch:
            raise ValueError(f"{who}: does not fit the {family.title} tower: {mismatch} "
                             "(swap needs the same width, image and patch size: no interpolation)")
    expected = tower_shapes(tower_config)
    layers = {int(m.group(1)) for name in state if (m := _LAYER_KEY.match(name))}
    encoder_layers, tower_layers = (max(layers) + 1 if layers else 0), tower_config.num_hidden_layers
    rule = family.feature_rule(vlm_config)
    if encoder_layers < tower_layers:
        raise ValueError(f"{who}: {encoder_layers} layers, the {family.title} tower {tower_layers}: "
                         f"tower layers {encoder_layers}..{tower_layers - 1} have no encoder weights")
    if encoder_layers > tower_layers:
        if rule.reads_last_hidden_state:
            raise ValueError(f"{who}: {encoder_layers} layers, the {family.title} tower {tower_layers}, and "
                             f"{family.class_name} reads last_hidden_state: it would read layer {tower_layers} through "
                             "post_layernorm, which is not an output of the encoder")
        for layer in rule.absolute(tower_layers).layers:
            if not 0 <= layer <= tower_layers:
                raise ValueError(f"{who}: {family.class_name} reads {rule.describe()}, outside a "
                                 f"{tower_layers}-layer tower")
    mapped, dropped = {}, []
    for name, tensor in state.items():
        if name in expected:
            mapped[name] = tensor
            continue
        match = _LAYER_KEY.match(name)
        if name.startswith("head.") or (match and int(match.group(1)) >= tower_layers):
            dropped.append(name)
            continue
        raise ValueError(f"{who}: tensor {name!r} has no place in the {family.title} tower")
    missing = sorted(expected.keys() - mapped.keys())
    if missing:
        raise ValueError(f"{who}: the {family.title} tower needs {len(missing)} tensors the encoder lacks "
                         f"({missing[:3]})")
    for name, tensor in mapped.items():
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(f"{who}: {name} is {list(tensor.shape)}, the {family.title} tower takes "
                             f"{list(expected[name])}")
    return TowerMap(mapped, dropped, encoder_layers, tower_layers)


def encoder_tower_state(encoder: str | Path | dict[str, torch.Tensor], family: VLMFamily,
                        vlm_config: PretrainedConfig) -> dict[str, torch.Tensor]:
    """The encoder's weights named as `vlm_config`'s tower takes them (`load_state_dict(strict=True)`)."""
    return map_encoder_to_tower(encoder, family, vlm_config).state
